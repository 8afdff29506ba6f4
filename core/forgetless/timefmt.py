"""Kubernetes timestamps (RFC 3339, UTC, second precision: `2026-01-02T03:04:05Z`) to and from datetimes;
short durations for people (`12m41s`)."""

from __future__ import annotations

from datetime import datetime, timezone


def fmt_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_duration(seconds: float) -> str:
    """`12m41s`, `45s`, `1h02m`: short enough for a progress line or a printer column."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
