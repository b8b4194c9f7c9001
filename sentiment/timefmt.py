"""Timestamps as every record of this project writes them: ISO 8601, UTC, with a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(moment: datetime | None = None) -> str:
    """`moment` (default: now) as `2026-11-28T15:30:12.345678Z`; a naive datetime is taken as UTC."""
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_utc_iso(text: str) -> datetime:
    """The inverse of `utc_iso` (ValueError when `text` is not ISO 8601)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
