"""The work queue of a controller: one reconcile per key at a time (`Coalescer`), and watch events that
only echo the controller's own writes skipped by the object's fingerprint (`WorkQueue`)."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Hashable, Optional

log = logging.getLogger("forgetless.operator")


class Coalescer:
    """One run at a time per key: a trigger while a run is in progress marks the key dirty, and the
    run repeats once afterwards (however many triggers came). A run that returns False (it failed)
    is not repeated; the resync loop retries it.

    A trigger may say `needed`: a check made only once the run in progress is over, whether it
    still calls for a repeat (a watch event that raced the run's own writes: the echo of its status
    patch, or of the Job it created, arriving before the response did). The run repeats when any
    trigger without a check came or any check says yes."""

    def __init__(self) -> None:
        self._running: set[Any] = set()
        self._dirty: dict[Any, list[Optional[Callable[[], bool]]]] = {}

    def running(self, key: Any) -> bool:
        return key in self._running

    async def run(self, key: Any, once: Callable[[], Awaitable[bool]],
                  needed: Optional[Callable[[], bool]] = None) -> None:
        if key in self._running:
            self._dirty.setdefault(key, []).append(needed)
            return
        self._running.add(key)
        try:
            while True:
                self._dirty.pop(key, None)
                if not await once():
                    return
                checks = self._dirty.pop(key, None)
                if checks is None or not any(check is None or check() for check in checks):
                    return
        finally:
            self._running.discard(key)
            self._dirty.pop(key, None)

    def forget(self, key: Any) -> None:
        if key not in self._running:
            self._dirty.pop(key, None)


Key = tuple[str, str]  # (namespace, name)
Reconcile = Callable[[str, str, Optional[dict]], Awaitable[Any]]


class WorkQueue:
    """Coalesced reconciles of one kind of object, keyed (namespace, name).

    `on_object` (a watch event of the object) skips a body whose `fingerprint` is the one the last
    reconcile wrote (`wrote`): the echo of our own status patch, kopf's own edits. The first sight of
    an object (created, or listed at start-up) hands its watch body to the first run, which is as
    fresh as a GET and cannot predate a write of ours; every later run re-reads. An event during a
    run is judged after it (the echo of its status patch can come before the patch's response).
    A failed run is logged and handed to `failed`; the resync loop retries."""

    def __init__(self, what: str, reconcile: Reconcile, fingerprint: Callable[[Any], str],
                 failed: Callable[[str], None]) -> None:
        self.what, self._reconcile, self._fingerprint, self._failed = what, reconcile, fingerprint, failed
        self._coalescer = Coalescer()
        self._fingerprints: dict[Key, str] = {}

    def running(self, namespace: str, name: str) -> bool:
        return self._coalescer.running((namespace, name))

    def wrote(self, namespace: str, name: str, body: Any) -> None:
        """The object as our last write left it: its echo needs no reconcile."""
        self._fingerprints[(namespace, name)] = self._fingerprint(body)

    def forget(self, namespace: str, name: str) -> None:
        self._fingerprints.pop((namespace, name), None)
        self._coalescer.forget((namespace, name))

    async def on_object(self, namespace: str, name: str, body: Any) -> None:
        key = (namespace, name)
        known, seen = self._fingerprints.get(key), self._fingerprint(body)
        if known == seen:
            return
        await self.trigger(namespace, name, first_sight=body if known is None else None,
                           needed=lambda: self._fingerprints.get(key) != seen)

    async def trigger(self, namespace: str, name: str, first_sight: Optional[dict] = None,
                      needed: Optional[Callable[[], bool]] = None) -> None:
        """Reconcile now, or once more after the run in progress (with `needed`: only if it says so then)."""
        bodies = [first_sight]  # only the first run of this trigger may use the watch body

        async def once() -> bool:
            try:
                await self._reconcile(namespace, name, bodies.pop() if bodies else None)
            except Exception as exc:  # noqa: BLE001 - counted, logged; the resync loop retries
                self._failed(namespace)
                log.warning("reconcile of %s %s/%s failed: %s", self.what, namespace, name, exc)
                return False
            return True

        await self._coalescer.run((namespace, name), once, needed)
