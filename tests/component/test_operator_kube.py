"""The operator's API client over TLS with client certificates (as kind issues them), re-login on 401,
and the idempotent verbs."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from pathlib import Path

import kopf
import pytest
from aiohttp import web

from forgetless_operator.kit.client import MERGE_PATCH, ApiError, KubeClient, resource_path


def test_resource_paths():
    assert resource_path("v1", "Pod", "ns", "p", "status") == "/api/v1/namespaces/ns/pods/p/status"
    assert resource_path("batch/v1", "Job", "ns") == "/apis/batch/v1/namespaces/ns/jobs"
    assert resource_path("forgetless.dev/v1alpha1", "FineTuneJob", "ns", "a", "status") == (
        "/apis/forgetless.dev/v1alpha1/namespaces/ns/finetunejobs/a/status")


def _pki(tmp: Path) -> dict[str, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed (needed to make test certificates)")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=test-ca")
    (tmp / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=kubernetes-admin/O=system:masters")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        extra = ["-extfile", "san.cnf"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", *extra)
    return {n: tmp / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


async def test_tls_client_certificates_token_and_relogin(tmp_path: Path):
    pki = _pki(tmp_path)
    seen: list[dict] = []
    tokens = iter(["expired", "fresh"])

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert")
        seen.append({"auth": request.headers.get("Authorization"), "peer": peer, "method": request.method,
                     "type": request.content_type, "body": await request.text()})
        if request.headers.get("Authorization") == "Bearer expired":
            return web.json_response({"kind": "Status", "reason": "Unauthorized", "message": "token"}, status=401)
        if request.method == "POST":
            return web.json_response({"kind": "Status", "reason": "AlreadyExists", "message": "exists"}, status=409)
        if request.method == "DELETE":
            return web.json_response({"kind": "Status", "reason": "NotFound", "message": "gone"}, status=404)
        if request.method == "GET" and request.path.endswith("/forbidden"):
            return web.json_response({"kind": "Status", "reason": "Forbidden", "message": "rbac"}, status=403)
        return web.json_response({"metadata": {"name": "x"}})

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca.crt"]))
    server_ctx.load_cert_chain(str(pki["server.crt"]), str(pki["server.key"]))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    logins = []

    def connect() -> kopf.ConnectionInfo:
        logins.append(1)
        return kopf.ConnectionInfo(server=f"https://127.0.0.1:{port}", ca_data=b64(pki["ca.crt"]),
                                   certificate_data=b64(pki["client.crt"]), private_key_data=b64(pki["client.key"]),
                                   scheme="Bearer", token=next(tokens))

    client = KubeClient(connect)
    try:
        assert await client.get("v1", "Pod", "ns", "p") == {"metadata": {"name": "x"}}
        assert len(logins) == 2  # 401 -> logged in again -> retried with the fresh token
        assert seen[-1]["auth"] == "Bearer fresh"
        assert ("commonName", "kubernetes-admin") in [pair for rdn in seen[-1]["peer"]["subject"] for pair in rdn]
        assert await client.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}) is None
        assert await client.delete("batch/v1", "Job", "ns", "j") is False
        assert seen[-1]["body"] and '"propagationPolicy": "Background"' in seen[-1]["body"]
        await client.patch("forgetless.dev/v1alpha1", "FineTuneJob", "ns", "a", {"status": {"phase": "Baseline"}}, "status")
        assert seen[-1]["type"] == MERGE_PATCH
        with pytest.raises(ApiError) as error:
            await client.get("v1", "Pod", "ns", "forbidden")
        assert error.value.status == 403 and "rbac" in str(error.value)
    finally:
        await client.close()
        await runner.cleanup()


def test_login_reads_kubeconfig_now_and_leaves_the_clients_default_alone(tmp_path, monkeypatch):
    """The kubernetes client freezes $KUBECONFIG at import; the operator's login must use the current
    value, and must not leave it behind for other users of the client in the same process."""
    import json

    from kubernetes.config import kube_config

    from tests.support.fakeapi import kubeconfig
    from forgetless_operator.handlers import login

    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(kubeconfig("http://127.0.0.1:1")))
    monkeypatch.setenv("KUBECONFIG", str(path))
    before = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    import kopf

    info = login(settings=kopf.OperatorSettings())
    assert info.server == "http://127.0.0.1:1"
    assert kube_config.KUBE_CONFIG_DEFAULT_LOCATION == before
