"""Reads many reconciles share."""

from __future__ import annotations

import asyncio

from forgetless_operator.kit.client import KubeClient


class SharedReads:
    """GETs of objects many reconciles read (a PVC, a cache ConfigMap), shared for `ttl` seconds: a
    burst of new objects costs one request, not one each. Only for reads where staleness is harmless."""

    def __init__(self, kube: KubeClient, ttl: float) -> None:
        self.kube, self.ttl = kube, ttl
        self._reads: dict[tuple[str, str, str, str], tuple[float, asyncio.Future]] = {}

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        key = (api_version, kind, namespace, name)
        loop = asyncio.get_running_loop()
        cached = self._reads.get(key)
        if cached is None or cached[0] < loop.time():
            future = asyncio.ensure_future(self.kube.get(api_version, kind, namespace, name))
            cached = (loop.time() + self.ttl, future)
            self._reads[key] = cached
            if len(self._reads) > 1024:
                self._reads = {k: v for k, v in self._reads.items() if v[0] >= loop.time()}
        try:
            return await asyncio.shield(cached[1])
        except Exception:
            self._reads.pop(key, None)
            raise
