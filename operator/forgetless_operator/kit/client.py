"""A thin async Kubernetes API client (aiohttp) for the few calls a controller makes.

Credentials come from kopf's login helpers (service account in a pod, else $KUBECONFIG), so the
operator and kopf's own watches talk to the same server with the same identity. On 401 the client
logs in again once (bound service-account tokens rotate). Status goes to the `/status` subresource
as a JSON merge patch (`application/merge-patch+json`); creates that meet 409 AlreadyExists and
deletes that meet 404 are successes (idempotent replays).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from typing import Any, Callable, Optional
from urllib.parse import quote

import aiohttp

MERGE_PATCH = "application/merge-patch+json"

PLURALS: dict[str, str] = {}
"""Resource names that are not the kind in lower case plus "s" (none of those the operator reads yet)."""


def plural(kind: str) -> str:
    return PLURALS.get(kind) or kind.lower() + "s"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        self.reason = body.get("reason") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: HTTP {status} {self.reason or ''}: {message}")


def resource_path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = base + (f"/namespaces/{quote(namespace)}" if namespace else "") + f"/{plural(kind)}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def _material(data: Any, suffix: str) -> str:
    """kubeconfig data fields are base64 (or raw PEM); ssl wants files."""
    raw = data.encode() if isinstance(data, str) else data
    if not raw.lstrip().startswith(b"-----"):
        raw = base64.b64decode(raw)
    handle, path = tempfile.mkstemp(prefix="forgetless-", suffix=suffix)
    with os.fdopen(handle, "wb") as out:
        out.write(raw)
    return path


class KubeClient:
    """`connect()` returns a kopf.ConnectionInfo (or None); called at first use and after a 401.

    At most CONNECTIONS requests are in flight; more wait for a free connection (in order). Without a
    bound every concurrent reconcile opens a TLS connection of its own: a burst of 500 new jobs took
    the operator to 540 MB RSS against a real API server (benchmarks/operator_scale.py --kubeconfig,
    before child events were filtered), and a resync pass triggers every running job at once."""

    CONNECTIONS = 32

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._info: Any = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._ssl: ssl.SSLContext | bool | None = None
        self._headers: dict[str, str] = {}
        self.requests = 0

    def _login(self) -> None:
        info = self._connect()
        if info is None:
            raise RuntimeError("no Kubernetes credentials: not in a pod and no usable $KUBECONFIG")
        self._info = info
        self._headers = dict(info.as_http_headers()) if hasattr(info, "as_http_headers") else {}
        if info.server.startswith("https"):
            if info.insecure:
                self._ssl = False
            else:
                temporary: list[str] = []  # data fields go through 0600 temp files, deleted once loaded

                def material(path: Any, data: Any, suffix: str) -> str | None:
                    if path:
                        return str(path)
                    if data:
                        temporary.append(_material(data, suffix))
                        return temporary[-1]
                    return None

                try:
                    context = ssl.create_default_context(cafile=material(info.ca_path, info.ca_data, ".crt"))
                    cert = material(info.certificate_path, info.certificate_data, ".crt")
                    if cert:
                        context.load_cert_chain(cert, material(info.private_key_path, info.private_key_data, ".key"))
                finally:
                    for path in temporary:
                        os.unlink(path)
                self._ssl = context
        else:
            self._ssl = None

    async def _session_(self) -> aiohttp.ClientSession:
        if self._info is None:
            self._login()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=60, sock_connect=10, sock_read=30),
                connector=aiohttp.TCPConnector(limit=self.CONNECTIONS),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
                      content_type: str = "application/json", retry_auth: bool = True) -> Any:
        session = await self._session_()
        headers = {**self._headers, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        self.requests += 1
        async with session.request(method, self._info.server.rstrip("/") + path, params=params, data=data,
                                   headers=headers, ssl=self._ssl) as response:
            text = await response.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = text
            if response.status == 401 and retry_auth:
                self._login()
                return await self.request(method, path, params=params, body=body, content_type=content_type,
                                          retry_auth=False)
            if response.status >= 400:
                raise ApiError(response.status, method, path, payload)
            return payload

    # ------------------------------------------------------------ verbs

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return await self.request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: str | None = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", resource_path(api_version, kind, namespace), params=params)
        return list((result or {}).get("items") or [])

    async def create(self, obj: dict) -> dict | None:
        """POST; the created object, or None when it already existed (409 AlreadyExists = success)."""
        meta = obj["metadata"]
        try:
            return await self.request("POST", resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace")),
                                      body=obj)
        except ApiError as exc:
            if exc.status == 409 and exc.reason == "AlreadyExists":
                return None
            raise

    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str, patch: dict,
                    subresource: str | None = None) -> dict:
        return await self.request("PATCH", resource_path(api_version, kind, namespace, name, subresource),
                                  body=patch, content_type=MERGE_PATCH)

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str,
                     propagation_policy: str = "Background") -> bool:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation_policy}
        try:
            await self.request("DELETE", resource_path(api_version, kind, namespace, name), body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
