"""Store capacities as a control message: `{"capacity_bytes": {"<tier>": bytes, ...}}`.

The autoscaler decides capacities and the serving side applies them (autoscaler/control_plane.py
carries them). `parse_capacities` is the one validator: anything but an object of tier names to
non-negative finite byte counts is rejected with a message, and the caller keeps what it had.
"""

from __future__ import annotations

import json
import math


def parse_capacities(text: str) -> dict[str, int]:
    """Tier name → capacity in bytes from the control file's text; ValueError if malformed."""
    control = json.loads(text)
    if not isinstance(control, dict):
        raise ValueError(f"expected a JSON object, got {type(control).__name__}")
    caps = control.get("capacity_bytes", {})
    if not isinstance(caps, dict):
        raise ValueError("'capacity_bytes' must be an object of tier name -> bytes")
    out: dict[str, int] = {}
    for name, value in caps.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"capacity of tier {name!r} must be a non-negative number of bytes, got {value!r}")
        out[str(name)] = int(value)
    return out
