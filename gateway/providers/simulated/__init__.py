"""The built-in simulated provider: a programmable fault schedule behind the OpenAI API.

It runs in process (:class:`SimulatedProvider`, no sockets) or as a standalone server
(:class:`SimulatedServer`, :func:`build_app`, :func:`run_standalone` for ``gateway simulate``).
Both share one :class:`Simulator` (fault selection, content, pacing).

Only the settings are imported eagerly: :mod:`gateway.config` imports them, and the provider
imports :mod:`gateway.config`; everything else is loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway.providers.simulated.settings import Fault, SimulatedSettings

if TYPE_CHECKING:
    from gateway.providers.simulated.engine import Simulator
    from gateway.providers.simulated.provider import SimulatedProvider
    from gateway.providers.simulated.schedule import FaultSchedule
    from gateway.providers.simulated.server import (
        SimulatedServer,
        build_app,
        load_settings_file,
        run_standalone,
    )

__all__ = [
    "Fault",
    "FaultSchedule",
    "SimulatedProvider",
    "SimulatedServer",
    "SimulatedSettings",
    "Simulator",
    "build_app",
    "load_settings_file",
    "run_standalone",
]

_LAZY = {
    "FaultSchedule": "schedule",
    "SimulatedProvider": "provider",
    "SimulatedServer": "server",
    "Simulator": "engine",
    "build_app": "server",
    "load_settings_file": "server",
    "run_standalone": "server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
