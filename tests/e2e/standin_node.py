"""A stand-in kubelet for e2e tests: runs the Pending Pods of some namespaces as local processes.

A cluster with an API server and a controller manager but no kubelet (and no scheduler) leaves
every Pod Pending. `StandInNode` plays the node for the namespaces it is given, the way a kubelet
would, with one process per pod instead of one container:

* a pod is started when it is Pending, has no scheduling gates, no deletionTimestamp, and this
  node has not started it before. `spec.nodeName` is never set: unbound pods are deleted at once
  by the API server (no kubelet has to confirm), and the Job controller still counts their phases;
* only the first container runs (pods with init containers are refused, visibly), and
  `restartPolicy` is treated as Never: an exited process is final;
* the container's filesystem is a per-pod folder `rootfs/` in which every volume mount is a
  symlink to a host folder: one shared folder per PersistentVolumeClaim under `root/pvc/` (what a
  ReadWriteMany volume is), per-pod folders for emptyDir, configMap and secret volumes (their keys
  as files, read at pod start) and downwardAPI volumes (their fieldRef items as files: metadata
  name, namespace, uid, labels['...'], annotations['...']); other volume types (the service account's projected volume
  included) are empty folders. Since a process cannot be given its own mount namespace, every
  command, arg and env value that *is* a mount path (or lies under one) is rewritten to the rootfs
  path; so is the termination message path, realised as a per-pod file. Mounts are not read-only;
* env comes from the pod spec (value, $(VAR) expansion, fieldRef, configMapKeyRef, secretKeyRef,
  envFrom) over a minimal base env; a missing non-optional reference keeps the pod waiting with
  reason CreateContainerConfigError, retried on each poll, as kubelet does;
* each pod gets its own loopback address as its IP (127.1.x.y: the whole of 127.0.0.0/8 reaches this
  host), reported in `status.podIP` and the downward API, so a process that binds its pod IP can be
  reached there by whoever reads the pod, as on a pod network;
* status is written to the status subresource: Running when started, Succeeded/Failed with a
  terminated state (exit code, reason, termination message) when the process exits;
* a pod deleted while running gets SIGTERM on its process group, then SIGKILL after the grace;
  `stop()` ends every process the same way but writes no status (a node going away).

Layout under `root`: `node.log` (one line per start, exit, kill, problem), `pvc/<claim>/`, and
`pods/<namespace>/<pod>-<uid8>/` holding `rootfs/`, `volumes/`, `container.log`, `termination-log`.

Nothing here knows about any particular operator: callers adapt the processes through
`entrypoint` (the image ENTRYPOINT, used when a container has no `command`) and `env_hook`
(all "pods" share one host: which address a process binds, and DNS names, are the caller's business).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

NODE_NAME = "standin-node"
HOST_IP = "127.0.0.1"
_pod_ips = itertools.count(1)  # process-wide: two nodes of one test session never hand out the same IP


def next_pod_ip() -> str:
    """127.1.0.1, 127.1.0.2, ... 127.1.255.254, then round again (older pods are long gone by then)."""
    n = next(_pod_ips) % (256 * 254)
    return f"127.1.{n // 254}.{n % 254 + 1}"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MAX_MESSAGE_BYTES = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048
HOST_ENV_KEPT = ("PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS", "HOME")
REQUEST_TIMEOUT = 10

EnvHook = Callable[[dict, Path, dict], "dict | None"]


class ConfigError(Exception):
    """The pod cannot start yet (a referenced ConfigMap, Secret or key is missing)."""


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclasses.dataclass
class PodRecord:
    """What this node did with one pod. Returned to callers as snapshots (copies)."""

    namespace: str
    name: str
    uid: str
    dir: Path
    rootfs: Path
    log_path: Path
    pid: int | None = None
    started_at: str = ""
    returncode: int | None = None  # as Popen reports it: negative when killed by a signal
    exit_code: int | None = None  # as kubelet reports it: 128 + signal when killed by a signal
    message: str = ""
    deleted: bool = False  # the pod got a deletionTimestamp or vanished while running


@dataclasses.dataclass
class _Running:
    record: PodRecord
    proc: subprocess.Popen | None
    pod: dict
    kill_deadline: float | None = None  # set when terminating: SIGKILL after this monotonic time
    gone: bool = False  # the pod no longer exists in the API
    pending_status: dict | None = None  # a status patch still to be written (retried each poll)
    oom: bool = False  # killed by oom_kill: reported as kubelet reports the cgroup OOM killer


class StandInNode:
    def __init__(self, core_v1_api: Any, namespaces: list[str], root: Path, *, entrypoint: list[str],
                 env_hook: EnvHook | None = None, poll_seconds: float = 0.3, grace_seconds: float = 3.0):
        self.core = core_v1_api
        self.namespaces = list(namespaces)
        self.root = Path(root)
        self.entrypoint = list(entrypoint)
        self.env_hook = env_hook
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self._lock = threading.RLock()
        self._pods: dict[str, _Running] = {}  # by uid, every pod this node started
        self._waiting: dict[str, str] = {}  # uid -> waiting message last written
        self._list_errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self._node_log = self.root / "node.log"

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "StandInNode":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="standin-node", daemon=True)
        self._thread.start()
        self._log(f"node started for namespaces {self.namespaces}")
        return self

    def stop(self) -> None:
        """Stop polling, then end every process still running: SIGTERM, SIGKILL after the grace."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT * 2)
        with self._lock:
            alive = [r for r in self._pods.values() if r.proc is not None and r.proc.poll() is None]
            for run in alive:
                self._signal(run, signal.SIGTERM, "node stopping")
            deadline = time.monotonic() + self.grace_seconds
            for run in alive:
                try:
                    run.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._signal(run, signal.SIGKILL, "node stopping, grace over")
                    run.proc.wait()
                self._record_exit(run)
                self._log(f"exit {self._key(run)} code={run.record.exit_code} (node stopped)")

    def __enter__(self) -> "StandInNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- test helpers ----------------------------------------------------------------------
    def pods(self) -> list[PodRecord]:
        with self._lock:
            return [dataclasses.replace(r.record) for r in self._pods.values()]

    def kill(self, namespace: str, pod_name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the process group of a running pod (an OOM kill, a crash); the exit follows."""
        with self._lock:
            run = self._find(namespace, pod_name)
            if run is None or run.proc is None or run.proc.poll() is not None:
                raise LookupError(f"no running process for pod {namespace}/{pod_name}")
            self._signal(run, sig, "kill requested")

    def oom_kill(self, namespace: str, pod_name: str) -> None:
        """What the kernel's OOM killer does to a container over its memory limit: SIGKILL, reported
        with reason OOMKilled and exit code 137."""
        with self._lock:
            run = self._find(namespace, pod_name)
            if run is None or run.proc is None or run.proc.poll() is not None:
                raise LookupError(f"no running process for pod {namespace}/{pod_name}")
            run.oom = True
            self._signal(run, signal.SIGKILL, "OOM kill requested")

    def log(self, namespace: str, pod_name: str) -> str:
        with self._lock:
            run = self._find(namespace, pod_name)
        if run is None:
            raise LookupError(f"pod {namespace}/{pod_name} was not started by this node")
        return run.record.log_path.read_text(errors="replace")

    def wait_started(self, namespace: str, match: str | Callable[[PodRecord], bool],
                     timeout: float = 15.0) -> PodRecord:
        """The first pod started in `namespace` whose name is `match` (or for which match(record))."""
        return self._wait(namespace, match, timeout, lambda r: True, "started")

    def wait_exited(self, namespace: str, match: str | Callable[[PodRecord], bool],
                    timeout: float = 15.0) -> PodRecord:
        return self._wait(namespace, match, timeout, lambda r: r.exit_code is not None, "exited")

    def _wait(self, namespace, match, timeout, done, what) -> PodRecord:
        accept = (lambda r: r.name == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            for record in self.pods():
                if record.namespace == namespace and accept(record) and done(record):
                    return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no pod {what} in {namespace} matching {match!r} within {timeout} s; "
                                   f"node log:\n{self._tail(self._node_log, 40, 4000)}")
            time.sleep(0.05)

    def _find(self, namespace: str, name: str) -> _Running | None:
        found = [r for r in self._pods.values() if r.record.namespace == namespace and r.record.name == name]
        return found[-1] if found else None

    # ---- the polling loop ------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once()
            except Exception:  # noqa: BLE001 - the node must outlive any one failure
                self._log(f"poll failed:\n{traceback.format_exc()}")
            self._stop.wait(self.poll_seconds)

    def _poll_once(self) -> None:
        for namespace in self.namespaces:
            try:
                response = self.core.list_namespaced_pod(namespace, _preload_content=False,
                                                         _request_timeout=REQUEST_TIMEOUT)
                items = json.loads(response.data)["items"]
                self._list_errors.pop(namespace, None)
            except Exception as exc:  # noqa: BLE001
                if self._list_errors.get(namespace) != str(exc):
                    self._list_errors[namespace] = str(exc)
                    self._log(f"cannot list pods in {namespace}: {exc}")
                continue
            self._sync_namespace(namespace, items)
        self._reap()

    def _sync_namespace(self, namespace: str, items: list[dict]) -> None:
        live = {pod["metadata"]["uid"]: pod for pod in items}
        with self._lock:
            for uid in [u for u in self._waiting if u not in live]:
                del self._waiting[uid]
            for uid, run in self._pods.items():
                if run.record.namespace != namespace:
                    continue
                pod = live.get(uid)
                run.gone = pod is None
                if pod is not None:
                    run.pod = pod
                if run.proc is not None and run.proc.poll() is None and run.kill_deadline is None and (
                        pod is None or pod["metadata"].get("deletionTimestamp")):
                    run.record.deleted = True
                    run.kill_deadline = time.monotonic() + self.grace_seconds
                    self._signal(run, signal.SIGTERM, "pod deleted" if pod is None else "pod terminating")
        for pod in items:
            try:
                self._maybe_start(pod)
            except Exception:  # noqa: BLE001 - one bad pod must not stop the others
                self._log(f"start of {namespace}/{pod['metadata']['name']} failed:\n{traceback.format_exc()}")

    def _reap(self) -> None:
        with self._lock:
            for run in list(self._pods.values()):
                try:
                    if run.proc is not None and run.record.exit_code is None:
                        if run.proc.poll() is not None:
                            self._on_exit(run)
                        elif run.kill_deadline is not None and time.monotonic() > run.kill_deadline:
                            self._signal(run, signal.SIGKILL, "grace period over")
                            run.kill_deadline = float("inf")
                    if run.pending_status is not None:
                        self._flush_status(run)
                except Exception:  # noqa: BLE001
                    self._log(f"handling of {self._key(run)} failed:\n{traceback.format_exc()}")

    # ---- starting a pod --------------------------------------------------------------------
    def _maybe_start(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        uid = meta["uid"]
        with self._lock:
            if uid in self._pods:
                return
        if (pod.get("status", {}).get("phase", "Pending") != "Pending" or spec.get("schedulingGates")
                or meta.get("deletionTimestamp")):
            return
        container = spec["containers"][0]
        if spec.get("initContainers"):
            self._set_waiting(pod, container, "StandInNodeUnsupported",
                              "init containers are not run by the stand-in node")
            return
        pod = {**pod, "status": {**(pod.get("status") or {}), "podIP": next_pod_ip()}}  # the downward API sees it
        try:
            fetch = self._fetcher(meta["namespace"])
            pod_env = self._resolve_env(pod, container, fetch)
            volumes = {v["name"]: self._resolve_volume(v, fetch, pod) for v in spec.get("volumes", [])}
        except ConfigError as exc:
            self._set_waiting(pod, container, "CreateContainerConfigError", str(exc))
            return
        self._launch(pod, container, pod_env, volumes)

    def _launch(self, pod: dict, container: dict, pod_env: dict, volumes: dict) -> None:
        meta = pod["metadata"]
        pod_dir = self.root / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
        record = PodRecord(meta["namespace"], meta["name"], meta["uid"], pod_dir, pod_dir / "rootfs",
                           pod_dir / "container.log", started_at=now_rfc3339())
        run = _Running(record, None, pod)
        with self._lock:  # registered together with its pid: callers never see a half-started pod
            self._waiting.pop(record.uid, None)
            self._pods[record.uid] = run
            try:
                cmd, env = self._prepare(pod, container, pod_env, volumes, record)
                with record.log_path.open("ab") as out:
                    run.proc = subprocess.Popen(cmd, env=env, cwd=record.rootfs, stdin=subprocess.DEVNULL,
                                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                record.pid = run.proc.pid
            except Exception as exc:  # noqa: BLE001 - kubelet: the container could not start (exit 128)
                record.exit_code, record.message = 128, f"{type(exc).__name__}: {exc}"
                self._log(f"start-error {self._key(record)}: {record.message}\n{traceback.format_exc()}")
                self._queue_terminated(run, "StartError")
                self._flush_status(run)
                return
            extra = len(pod["spec"]["containers"]) - 1
            self._log(f"start {self._key(record)} pid={record.pid} cmd={cmd}"
                      + (f" (its {extra} other containers do not run)" if extra else ""))
            run.pending_status = {
                "phase": "Running", "podIP": pod["status"]["podIP"], "podIPs": [{"ip": pod["status"]["podIP"]}],
                "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}], "startTime": record.started_at, "conditions": self._conditions(True),
                "containerStatuses": [self._container_status(pod, True, {"running": {"startedAt": record.started_at}})]}
        self._flush_status(run)

    def _prepare(self, pod: dict, container: dict, pod_env: dict, volumes: dict,
                 record: PodRecord) -> tuple[list[str], dict[str, str]]:
        """Realises the volumes and mounts under the pod folder; the command and env, paths rewritten."""
        rootfs, pod_dir = record.rootfs, record.dir
        rootfs.mkdir(parents=True, exist_ok=True)
        hosts: dict[str, Path] = {}
        for name, (kind, value) in volumes.items():
            hosts[name] = self.root / "pvc" / value if kind == "pvc" else pod_dir / "volumes" / name
            hosts[name].mkdir(parents=True, exist_ok=True)
            if kind == "other":
                self._log(f"note {self._key(record)}: volume {name} is an empty folder (its type is not emulated)")
            for relative, data in (value.items() if kind != "pvc" else []):
                (hosts[name] / relative).parent.mkdir(parents=True, exist_ok=True)
                (hosts[name] / relative).write_bytes(data)
        mounts: list[tuple[str, str]] = []  # (mountPath, its path in the rootfs)
        for mount in sorted(container.get("volumeMounts", []), key=lambda m: len(m["mountPath"])):  # parents first
            path = "/" + mount["mountPath"].strip("/")
            if path == "/" or mount["name"] not in hosts:
                self._log(f"note {self._key(record)}: mount {mount} not realised")
                continue
            target = hosts[mount["name"]]
            sub = mount.get("subPath") or expand(mount.get("subPathExpr", ""), pod_env)
            if sub:
                target = target / sub
                target.mkdir(parents=True, exist_ok=True)
            link = rootfs / path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
            mounts.append((path, str(rootfs) + path))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)  # the longest mountPath wins
        termination_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        termination_file = pod_dir / "termination-log"
        termination_file.write_bytes(b"")
        in_rootfs = rootfs / termination_path.lstrip("/")
        if not in_rootfs.exists() and not in_rootfs.is_symlink():
            in_rootfs.parent.mkdir(parents=True, exist_ok=True)
            in_rootfs.symlink_to(termination_file)

        def rewrite(value: str) -> str:
            if value == termination_path:
                return str(termination_file)
            for path, local in mounts:
                if value == path or value.startswith(path + "/"):
                    return local + value[len(path):]
            return value

        command = container.get("command") or []
        command = [expand(c, pod_env) for c in command] if command else list(self.entrypoint)
        cmd = [rewrite(part) for part in command + [expand(a, pod_env) for a in container.get("args", [])]]
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8",
               "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"]}
        env.update({k: os.environ[k] for k in HOST_ENV_KEPT if k in os.environ and k not in pod_env})
        if "/tmp" in dict(mounts):
            env["TMPDIR"] = dict(mounts)["/tmp"]
        env.update({k: rewrite(v) for k, v in pod_env.items()})
        if self.env_hook is not None:
            env.update(self.env_hook(pod, rootfs, dict(env)) or {})
        return cmd, env

    # ---- env and volumes -------------------------------------------------------------------
    def _fetcher(self, namespace: str) -> Callable[[str, str], dict | None]:
        """Reads ConfigMaps/Secrets of the namespace (None when absent), each once per start attempt."""
        cache: dict[tuple[str, str], dict | None] = {}

        def fetch(kind: str, name: str) -> dict | None:
            if (kind, name) not in cache:
                read = self.core.read_namespaced_config_map if kind == "configmap" else self.core.read_namespaced_secret
                try:
                    obj = json.loads(read(name, namespace, _preload_content=False,
                                          _request_timeout=REQUEST_TIMEOUT).data)
                    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()} if kind == "configmap" else {}
                    for k, v in (obj.get("binaryData" if kind == "configmap" else "data") or {}).items():
                        data[k] = base64.b64decode(v)
                    cache[(kind, name)] = data
                except Exception as exc:  # noqa: BLE001
                    if getattr(exc, "status", None) != 404:
                        raise ConfigError(f"cannot read {kind} {namespace}/{name}: {exc}") from exc
                    cache[(kind, name)] = None
            return cache[(kind, name)]
        return fetch

    def _key_ref(self, kind: str, ref: dict, pod: dict, fetch) -> str | None:
        data = fetch(kind, ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            if data is None:
                raise ConfigError(f'{kind} "{ref["name"]}" not found')
            label = "ConfigMap" if kind == "configmap" else "Secret"
            raise ConfigError(f"couldn't find key {ref['key']} in {label} {pod['metadata']['namespace']}/{ref['name']}")
        return data[ref["key"]].decode(errors="replace")

    def _resolve_env(self, pod: dict, container: dict, fetch) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            kind, ref = ("configmap", source["configMapRef"]) if "configMapRef" in source else ("secret", source["secretRef"])
            data = fetch(kind, ref["name"])
            if data is None and not ref.get("optional"):
                raise ConfigError(f'{kind} "{ref["name"]}" not found')
            env.update({source.get("prefix", "") + k: v.decode(errors="replace") for k, v in (data or {}).items()})
        for var in container.get("env", []):
            source = var.get("valueFrom")
            if not source:
                env[var["name"]] = expand(var.get("value", ""), env)
                continue
            if "fieldRef" in source:
                value = field_value(pod, source["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in source:
                value = self._key_ref("configmap", source["configMapKeyRef"], pod, fetch)
            elif "secretKeyRef" in source:
                value = self._key_ref("secret", source["secretKeyRef"], pod, fetch)
            else:
                raise ConfigError(f"env {var['name']}: {sorted(source)} is not emulated by the stand-in node")
            if value is not None:
                env[var["name"]] = value
        return env

    def _resolve_volume(self, volume: dict, fetch, pod: dict | None = None) -> tuple[str, Any]:
        """('pvc', claim name) or ('files' | 'other', {relative path: bytes}): a per-pod folder with files."""
        if "persistentVolumeClaim" in volume:
            return "pvc", volume["persistentVolumeClaim"]["claimName"]
        if "downwardAPI" in volume:
            files = {}
            for item in volume["downwardAPI"].get("items") or []:
                if "fieldRef" not in item:
                    raise ConfigError(f"downwardAPI item {item.get('path')!r} of volume {volume['name']}: only "
                                      "fieldRef is emulated by the stand-in node")
                files[item["path"]] = field_value(pod or {}, item["fieldRef"]["fieldPath"]).encode()
            return "files", files
        if "configMap" not in volume and "secret" not in volume:  # emptyDir, or a type not emulated
            return ("files" if "emptyDir" in volume or "projected" in volume else "other"), {}
        kind, source = ("configmap", volume["configMap"]) if "configMap" in volume else ("secret", volume["secret"])
        name = source.get("name") or source.get("secretName")
        data = fetch(kind, name)
        if data is None:
            if source.get("optional"):
                return "files", {}
            raise ConfigError(f'{kind} "{name}" not found (volume {volume["name"]})')
        files = {}
        for item in source.get("items") or [{"key": key, "path": key} for key in data]:
            if item["key"] in data:
                files[item["path"]] = data[item["key"]]
            elif not source.get("optional"):
                raise ConfigError(f"couldn't find key {item['key']} in {kind} {name} (volume {volume['name']})")
        return "files", files

    # ---- exits and status ------------------------------------------------------------------
    def _on_exit(self, run: _Running) -> None:
        self._record_exit(run)
        record = run.record
        try:
            os.killpg(record.pid, signal.SIGKILL)  # like the container's cgroup: no leftover children
        except (ProcessLookupError, PermissionError):
            pass
        message = run.record.dir.joinpath("termination-log").read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace")
        container = run.pod["spec"]["containers"][0]
        if (not message and record.exit_code != 0
                and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"):
            message = self._tail(record.log_path, FALLBACK_LINES, FALLBACK_BYTES)
        record.message = message
        self._log(f"exit {self._key(run)} code={record.exit_code}" + (" (deleted)" if record.deleted else ""))
        if not run.gone:
            self._queue_terminated(run, "Completed" if record.exit_code == 0 else "OOMKilled" if run.oom else "Error")

    def _record_exit(self, run: _Running) -> None:
        rc = run.proc.returncode
        run.record.returncode = rc
        run.record.exit_code = 128 - rc if rc < 0 else rc

    def _queue_terminated(self, run: _Running, reason: str) -> None:
        record = run.record
        state = {"terminated": {"exitCode": record.exit_code, "reason": reason, "message": record.message,
                                "startedAt": record.started_at, "finishedAt": now_rfc3339()}}
        run.pending_status = {"phase": "Succeeded" if record.exit_code == 0 else "Failed",
                              "conditions": self._conditions(False),
                              "containerStatuses": [self._container_status(run.pod, False, state)]}

    def _flush_status(self, run: _Running) -> None:
        """Writes the pending status; a missing pod drops it, other failures leave it for the next poll."""
        record = run.record
        try:
            self.core.patch_namespaced_pod_status(record.name, record.namespace, {"status": run.pending_status},
                                                  _request_timeout=REQUEST_TIMEOUT)
            run.pending_status = None
        except Exception as exc:  # noqa: BLE001
            if getattr(exc, "status", None) == 404:
                run.pending_status, run.gone = None, True
            else:
                self._log(f"status patch of {self._key(run)} failed, will retry: {getattr(exc, 'status', '')} {exc}")

    def _set_waiting(self, pod: dict, container: dict, reason: str, message: str) -> None:
        meta = pod["metadata"]
        if self._waiting.get(meta["uid"]) == message:
            return
        status = {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}],
                  "containerStatuses": [self._container_status(pod, False, {"waiting": {"reason": reason, "message": message}})]}
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status},
                                                  _request_timeout=REQUEST_TIMEOUT)
            self._waiting[meta["uid"]] = message
            self._log(f"waiting {meta['namespace']}/{meta['name']}: {reason}: {message}")
        except Exception as exc:  # noqa: BLE001 - retried on the next poll
            self._log(f"waiting-status patch of {meta['namespace']}/{meta['name']} failed: {exc}")

    @staticmethod
    def _container_status(pod: dict, running: bool, state: dict) -> dict:
        container = pod["spec"]["containers"][0]
        return {"name": container["name"], "image": container.get("image", ""), "imageID": "", "ready": running,
                "restartCount": 0, "started": running, "state": state}

    @staticmethod
    def _conditions(ready: bool) -> list[dict]:
        now = now_rfc3339()
        return [{"type": kind, "status": "True" if ready or kind in ("PodScheduled", "Initialized") else "False",
                 "lastTransitionTime": now} for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]

    # ---- small helpers ---------------------------------------------------------------------
    def _signal(self, run: _Running, sig: int, why: str) -> None:
        self._log(f"kill {self._key(run)} pid={run.record.pid} {signal.Signals(sig).name} ({why})")
        try:
            os.killpg(run.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _tail(path: Path, lines: int, limit: int) -> str:
        try:
            data = path.read_bytes()
        except OSError:
            return ""
        return b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:])[-limit:].decode(errors="replace")

    @staticmethod
    def _key(run_or_record: Any) -> str:
        record = getattr(run_or_record, "record", run_or_record)
        return f"{record.namespace}/{record.name}"

    def _log(self, line: str) -> None:
        log.info("%s", line)
        with self._lock, self._node_log.open("a") as out:
            out.write(f"{time.strftime('%H:%M:%S', time.gmtime())}.{int(time.time() * 1000) % 1000:03d} {line}\n")


_VAR = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: a defined VAR is substituted, an undefined one is left as is, $$ is $."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def field_value(pod: dict, path: str) -> str:
    """The downward API: the value a fieldRef names."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    pod_ip = (pod.get("status") or {}).get("podIP") or HOST_IP
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": NODE_NAME, "spec.serviceAccountName": spec.get("serviceAccountName", ""),
              "status.podIP": pod_ip, "status.hostIP": HOST_IP, "status.podIPs": pod_ip, "status.hostIPs": HOST_IP}
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
    if match is None:
        raise ConfigError(f"fieldRef {path!r} is not emulated by the stand-in node")
    return (meta.get(match.group(1)) or {}).get(match.group(2), "")
