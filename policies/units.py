"""Human durations ("250ms", "2s", "1m") for policy documents and request constraints.

``policies`` may not import ``gateway``, so the parser lives here and the gateway's config
uses it too (:mod:`gateway.units` re-exports it): one grammar, one wording of its errors.
"""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ACCEPTED = "a duration such as '250ms', '30s', '2m' or a number of seconds"


def parse_duration(value: object) -> float:
    """Return seconds for ``"250ms"``, ``"2s"``, ``"1m"``, ``"1h"`` or a bare number of seconds.

    Raises ``ValueError`` naming the accepted forms when ``value`` is not one, is negative or is
    not finite (YAML's ``.inf``/``.nan`` are floats, and an infinite SLO is a mistake to report,
    not a limit to apply). Booleans are refused although ``bool`` is an ``int``.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_ACCEPTED}, got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError(f"expected a finite duration ({_ACCEPTED}), got {value!r}") from None
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"expected {_ACCEPTED}, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration ({_ACCEPTED}), got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds
