"""Human-friendly durations ("250ms", "30s", "2m") and sizes ("10MiB") for config files."""

from __future__ import annotations

import re

from policies.units import parse_duration

__all__ = ["parse_duration", "parse_size"]

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
