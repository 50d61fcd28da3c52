"""Human-friendly durations ("250ms", "30s", "2m") and sizes ("10MiB") for config files."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Return seconds for a duration such as ``"250ms"``, ``"30s"``, ``"2m"`` or a bare number.

    Bare numbers are seconds. Raises ``ValueError`` with a message that says what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '250ms' or '30s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(
            f"expected a duration such as '250ms', '30s', '2m' or a number of seconds, "
            f"got {value!r}"
        )
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    if not math.isfinite(seconds):
        # YAML's `.inf` and `.nan` are floats: a window, probe or deadline of infinite length
        # would fail at start (or never fire) instead of being reported here.
        raise ValueError(f"expected a finite duration, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Return bytes for a size such as ``"10MiB"``, ``"512KB"`` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '10MiB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    else:
        raise ValueError(
            f"expected a size such as '10MiB', '512KB' or a number of bytes, got {value!r}"
        )
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size
