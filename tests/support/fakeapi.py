"""An in-memory fake of the Kubernetes API, for the component tests and the scale benchmark.

Serves what kopf and `forgetless_operator.kit.client` call: discovery (/api, /apis, group versions),
list + watch (chunked JSON lines, label selectors, resourceVersion resume), get, create (409
AlreadyExists, generateName), JSON merge patch and JSON patch (with `test`; a merge patch that
carries metadata.resourceVersion is refused with 409 Conflict when the object moved on), the status
subresource (status changes through the main resource are ignored, as for CRDs with a status
subresource), delete (finalizers hold an object with deletionTimestamp) and owner-reference
cascading (foreground-less: dependents go right after the owner). Every request is recorded in
`FakeApi.requests` so tests can prove what the operator did.

Not a conformance fake: field selectors only by equality, no server-side apply, no admission; objects are
validated by the tests with kubernetes-validate instead.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from forgetless.api.schema import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    status: bool = False  # has a status subresource
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = [
    Kind("", "v1", "Pod", "pods", status=True),
    Kind("", "v1", "ConfigMap", "configmaps"),
    Kind("", "v1", "Service", "services", status=True),
    Kind("", "v1", "Event", "events"),
    Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", status=True),
    Kind("", "v1", "Namespace", "namespaces", namespaced=False, status=True),
    Kind("batch", "v1", "Job", "jobs", status=True),
    Kind(GROUP, VERSION, KIND, PLURAL, status=True, short_names=tuple(SHORT_NAMES)),
    Kind(GROUP, VERSION, "FineTuneSweep", "finetunesweeps", status=True, short_names=("fts",)),
    Kind("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False),
    Kind("kopf.dev", "v1", "KopfPeering", "kopfpeerings"),
    Kind("kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False),
]


@dataclass
class Request:
    method: str
    path: str
    content_type: str | None
    body: Any
    query: dict[str, str]
    at: float = 0.0  # time.monotonic() when it arrived


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


class PatchFailed(Exception):
    pass


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(doc: Any, ops: list[dict]) -> Any:
    """RFC 6902 (add, remove, replace, test) — enough for kopf's finalizer and annotation edits."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise PatchFailed(f"test failed at {op['path']}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                parent.pop(last, None)
        else:
            raise PatchFailed(f"unsupported op {kind}")
    return doc


def _field_matches(obj: dict, selector: str | None) -> bool:
    """Field selectors `a.b=c` / `a.b!=c` (metadata.name, involvedObject.name, ...)."""
    for term in (selector or "").split(","):
        if not term.strip():
            continue
        negate = "!=" in term
        path, value = term.split("!=" if negate else "=", 1)
        current: Any = obj
        for part in path.strip().split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if (str(current) == value.lstrip("=")) == negate:
            return False
    return True


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        term = term.strip()
        if not term:
            continue
        if term.startswith("!"):
            if term[1:] in labels:
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class _Watch:
    kind: Kind
    namespace: str | None
    selector: str | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class FakeApi:
    def __init__(self, namespaces: tuple[str, ...] = ("default",), latency: float = 0.0) -> None:
        self.objects: dict[tuple[str, str | None, str], dict] = {}  # (plural-key, ns, name) -> obj
        self._index: dict[str, dict[tuple[str | None, str], dict]] = {}  # plural-key -> (ns, name) -> obj
        self.requests: list[Request] = []
        self.log: dict[str, list[tuple[int, str, dict]]] = {}
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._watches: list[_Watch] = []
        self.latency = latency
        self.kinds = {self._key(k): k for k in KINDS}
        for namespace in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # ------------------------------------------------------------ store

    @staticmethod
    def _key(kind: Kind) -> str:
        return f"{kind.group}/{kind.version}/{kind.plural}"

    def kind_of(self, api_version: str, kind_name: str) -> Kind:
        for kind in KINDS:
            if kind.api_version == api_version and kind.kind == kind_name:
                return kind
        raise KeyError(f"{api_version} {kind_name}")

    def _emit(self, kind: Kind, type_: str, obj: dict) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self.log.setdefault(self._key(kind), []).append((rv, type_, copy.deepcopy(obj)))
        ns = obj["metadata"].get("namespace")
        for watch in self._watches:
            if watch.kind == kind and (watch.namespace is None or watch.namespace == ns) and _matches(
                obj["metadata"].get("labels") or {}, watch.selector
            ):
                watch.queue.put_nowait({"type": type_, "object": copy.deepcopy(obj)})

    def _bump(self, obj: dict) -> None:
        self._last_rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self._last_rv)

    def _store(self, key: tuple[str, str | None, str], obj: dict) -> None:
        self.objects[key] = obj
        self._index.setdefault(key[0], {})[key[1:]] = obj

    def _drop(self, key: tuple[str, str | None, str]) -> None:
        self.objects.pop(key, None)
        self._index.get(key[0], {}).pop(key[1:], None)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        obj = self.objects.get((self._key(self.kind_of(api_version, kind)), namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict]:
        key = self._key(self.kind_of(api_version, kind))
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items()
                if k == key and (namespace is None or ns == namespace)]

    def create(self, obj: dict) -> dict:
        kind = self.kind_of(obj["apiVersion"], obj["kind"])
        return self._create(kind, obj["metadata"].get("namespace"), obj)

    def _create(self, kind: Kind, namespace: str | None, body: dict) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = meta.get("generateName", "obj-") + uuid.uuid4().hex[:5]
        if kind.namespaced:
            meta["namespace"] = namespace
        key = (self._key(kind), namespace if kind.namespaced else None, meta["name"])
        if key in self.objects:
            raise _Status(409, "AlreadyExists", f'{kind.plural} "{meta["name"]}" already exists')
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if kind.kind == "CustomResourceDefinition":  # no controller here: established at once
            obj["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        self._bump(obj)
        self._store(key, obj)
        self._emit(kind, "ADDED", obj)
        return copy.deepcopy(obj)

    def update(self, api_version: str, kind_name: str, namespace: str | None, name: str, change: dict,
               subresource: str | None = None) -> dict:
        """Merge `change` like a PATCH would (tests use it to play kubelet / job controller)."""
        kind = self.kind_of(api_version, kind_name)
        return self._patch(kind, namespace, name, change, "application/merge-patch+json", subresource)

    def _patch(self, kind: Kind, namespace: str | None, name: str, patch: Any, content_type: str,
               subresource: str | None) -> dict:
        key = (self._key(kind), namespace if kind.namespaced else None, name)
        current = self.objects.get(key)
        if current is None:
            raise _Status(404, "NotFound", f'{kind.plural} "{name}" not found')
        wanted = ((patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None)
        if wanted is not None and str(wanted) != current["metadata"].get("resourceVersion"):
            raise _Status(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} "{name}": the object has '
                          "been modified; please apply your changes to the latest version and try again")
        try:
            if content_type.startswith("application/json-patch+json"):
                new = json_patch(current, patch)
            else:
                new = merge(current, patch)
        except PatchFailed as exc:
            raise _Status(422, "Invalid", str(exc)) from exc
        if kind.status:
            if subresource == "status":
                new = {**copy.deepcopy(current), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            else:
                new["status"] = copy.deepcopy(current.get("status"))
                if new["status"] is None:
                    new.pop("status")
        for fixed in ("uid", "creationTimestamp", "name", "namespace"):
            if fixed in current["metadata"]:
                new["metadata"][fixed] = current["metadata"][fixed]
        if new == current:
            return copy.deepcopy(current)
        if new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        self._bump(new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._drop(key)
            self._emit(kind, "DELETED", new)
            self._cascade(new["metadata"]["uid"])
            return copy.deepcopy(new)
        self._store(key, new)
        self._emit(kind, "MODIFIED", new)
        return copy.deepcopy(new)

    def delete(self, api_version: str, kind_name: str, namespace: str | None, name: str) -> dict:
        return self._delete(self.kind_of(api_version, kind_name), namespace, name)

    def _delete(self, kind: Kind, namespace: str | None, name: str) -> dict:
        key = (self._key(kind), namespace if kind.namespaced else None, name)
        current = self.objects.get(key)
        if current is None:
            raise _Status(404, "NotFound", f'{kind.plural} "{name}" not found')
        obj = copy.deepcopy(current)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                self._bump(obj)
                self._store(key, obj)
                self._emit(kind, "MODIFIED", obj)
            return copy.deepcopy(obj)
        self._drop(key)
        self._bump(obj)
        self._emit(kind, "DELETED", obj)
        self._cascade(obj["metadata"]["uid"])
        return obj

    def _cascade(self, uid: str) -> None:
        """Garbage collection: delete everything owned by `uid`."""
        for (kind_key, ns, name), obj in list(self.objects.items()):
            if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or []):
                if (kind_key, ns, name) in self.objects:
                    self._delete(self.kinds[kind_key], ns, name)

    # ------------------------------------------------------------ HTTP

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def requests_for(self, method: str, path_part: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and path_part in r.path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.requests.append(Request(request.method, request.path, request.content_type if body is not None else None,
                                     body, dict(request.query), time.monotonic()))
        try:
            return await self._dispatch(request, body)
        except _Status as status:
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": status.reason,
                 "message": status.message, "code": status.code},
                status=status.code,
            )

    async def _dispatch(self, request: web.Request, body: Any) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({
                "major": "1", "minor": "35", "gitVersion": "v1.35.0-fake", "gitCommit": "0" * 40,
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25",
                "compiler": "gc", "platform": "linux/amd64",
            })
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            groups: dict[str, set[str]] = {}
            for kind in KINDS:
                if kind.group:
                    groups.setdefault(kind.group, set()).add(kind.version)
            return web.json_response({"kind": "APIGroupList", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in sorted(vs)],
                 "preferredVersion": {"groupVersion": f"{g}/{sorted(vs)[0]}", "version": sorted(vs)[0]}}
                for g, vs in groups.items()
            ]})
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _Status(404, "NotFound", f"no route {request.path}")
        if not rest:
            return web.json_response(self._discovery(group, version))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        kind = self.kinds.get(f"{group}/{version}/{rest[0]}")
        if kind is None:
            raise _Status(404, "NotFound", f"the server could not find the requested resource {request.path}")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        method = request.method
        if name is None:
            if method == "GET" and request.query.get("watch") in ("true", "1"):
                return await self._watch(request, kind, namespace)
            if method == "GET":
                return web.json_response(self._list(kind, namespace, request.query.get("labelSelector"),
                                                    request.query.get("fieldSelector")))
            if method == "POST":
                return web.json_response(self._create(kind, namespace, body), status=201)
        else:
            if method == "GET":
                obj = self.objects.get((self._key(kind), namespace, name))
                if obj is None:
                    raise _Status(404, "NotFound", f'{kind.plural} "{name}" not found')
                return web.json_response(obj)
            if method == "PATCH":
                return web.json_response(self._patch(kind, namespace, name, body, request.content_type, subresource))
            if method == "DELETE":
                return web.json_response(self._delete(kind, namespace, name))
        raise _Status(405, "MethodNotAllowed", f"{method} {request.path}")

    def _discovery(self, group: str, version: str) -> dict:
        resources = []
        for kind in KINDS:
            if kind.group == group and kind.version == version:
                resources.append({
                    "name": kind.plural, "singularName": SINGULAR if kind.kind == KIND else kind.kind.lower(),
                    "namespaced": kind.namespaced, "kind": kind.kind, "shortNames": list(kind.short_names),
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                })
                if kind.status:
                    resources.append({"name": f"{kind.plural}/status", "singularName": "", "namespaced": kind.namespaced,
                                      "kind": kind.kind, "verbs": ["get", "patch", "update"]})
        if not resources:
            raise _Status(404, "NotFound", f"no group version {group}/{version}")
        return {"kind": "APIResourceList", "groupVersion": f"{group}/{version}".lstrip("/"), "resources": resources}

    def _list(self, kind: Kind, namespace: str | None, selector: str | None, fields: str | None = None) -> dict:
        items = [o for (ns, _), o in self._index.get(self._key(kind), {}).items()
                 if (namespace is None or ns == namespace) and _matches(o["metadata"].get("labels") or {}, selector)
                 and _field_matches(o, fields)]
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self._last_rv)}, "items": items}

    async def _watch(self, request: web.Request, kind: Kind, namespace: str | None) -> web.StreamResponse:
        selector = request.query.get("labelSelector")
        since = int(request.query.get("resourceVersion") or 0)
        watch = _Watch(kind, namespace, selector)
        for rv, type_, obj in self.log.get(self._key(kind), []):
            if rv > since and (namespace is None or obj["metadata"].get("namespace") == namespace) and _matches(
                obj["metadata"].get("labels") or {}, selector
            ):
                watch.queue.put_nowait({"type": type_, "object": obj})
        self._watches.append(watch)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            while True:
                event = await watch.queue.get()
                await response.write(json.dumps(event).encode() + b"\n")
        except (asyncio.CancelledError, ConnectionResetError):
            pass
        finally:
            self._watches.remove(watch)
        return response


class _Status(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for the operator's metrics server in tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def kubeconfig(server: str, namespace: str = "default") -> dict:
    """A kubeconfig for the fake (plain HTTP, a dummy bearer token)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        "current-context": "fake",
    }


async def serve(api: FakeApi, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start the fake on a free port; returns (runner, base URL)."""
    runner = web.AppRunner(api.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    return runner, f"http://{host}:{sockets[0].getsockname()[1]}"
