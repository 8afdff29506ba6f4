"""Skipping the watch events of children that change nothing a reconcile reads."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping


class ChildFilter:
    """Watch events of children that cannot change a reconcile's Decision: the `signature` (what a
    reconcile reads of a child, from the controller's read plan) is remembered per child, from the
    create response of a child the controller made and from every event; an event whose signature
    is the one already seen is skipped, and so is the first sight of a child `quiet` says is the
    same to a reconcile as no child at all. DELETED events and everything else trigger.

    Skipping is safe: a reconcile already ran (or is queued) after the event that carried the same
    signature, and it read the children fresh. Memory holds the `LIMIT` most recent children; one
    forgotten is treated as unseen (it then triggers once more). Time-based work and missed
    transitions are covered by the resync loop, which never skips."""

    LIMIT = 20_000

    def __init__(self, signature: Callable[[str, Mapping[str, Any]], tuple],
                 quiet: Callable[[str, Mapping[str, Any]], bool]) -> None:
        self._signature, self._quiet = signature, quiet
        self._seen: OrderedDict[tuple[str, str, str], tuple] = OrderedDict()

    @staticmethod
    def _key(kind: str, body: Any) -> tuple[str, str, str]:
        meta = body.get("metadata") or {}
        return kind, meta.get("namespace", ""), meta.get("name", "")

    def _remember(self, key: tuple[str, str, str], signature: tuple) -> None:
        self._seen[key] = signature
        self._seen.move_to_end(key)
        while len(self._seen) > self.LIMIT:
            self._seen.popitem(last=False)

    def created(self, kind: str, body: Any) -> None:
        """The controller created this child (the create's response): its first events echo it."""
        self._remember(self._key(kind, body), self._signature(kind, body))

    def needs_reconcile(self, kind: str, body: Any, event_type: str | None = None) -> bool:
        key = self._key(kind, body)
        if event_type == "DELETED":
            self._seen.pop(key, None)
            return True
        signature = self._signature(kind, body)
        known = self._seen.get(key)
        self._remember(key, signature)
        if known is None:
            return not self._quiet(kind, body)
        return known != signature
