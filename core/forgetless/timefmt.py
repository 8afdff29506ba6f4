"""Kubernetes timestamps (RFC 3339, UTC, second precision: `2026-01-02T03:04:05Z`) to and from datetimes."""

from __future__ import annotations

from datetime import datetime, timezone


def fmt_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
