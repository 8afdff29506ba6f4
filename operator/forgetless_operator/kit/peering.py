"""kopf's peering rule, for the loops of our own that kopf does not pause (the resync and progress loops)."""

from __future__ import annotations

from datetime import datetime, timedelta


def peering_allows(peering: dict | None, identity: str, priority: int, now: datetime) -> bool:
    """kopf's rule (kopf/_core/engines/peering.py): this replica acts unless another live peer in the
    peering object's status has the same or a higher priority. No peering object: it acts."""
    for peer, info in ((peering or {}).get("status") or {}).items():
        if peer == identity or not isinstance(info, dict):
            continue
        try:
            seen = datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
            alive = seen + timedelta(seconds=int(info.get("lifetime", 60))) > now
        except ValueError:
            continue
        if alive and int(info.get("priority", 0)) >= priority:
            return False
    return True
