"""metav1.Time as the API writes it ("2026-01-01T00:00:00Z": UTC, whole seconds) and
reads it (RFC 3339, with or without fractions and offsets), for every component."""
from __future__ import annotations

import time
from datetime import datetime, timezone


def rfc3339(seconds: float | None = None) -> str:
    """A metav1.Time: `seconds` since the epoch, or now."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ",
                         time.gmtime(time.time() if seconds is None else seconds))


def parse_rfc3339(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp; None for none or a bad one."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
