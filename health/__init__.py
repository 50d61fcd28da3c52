"""Health: what state is every deployment in right now (rolling metrics, probes, status).

Imports nothing of ``gateway`` or ``policies``. The rolling windows, stores and probes land with
the health issue; the foundation ships the package so the layout and its import rule hold.
"""

__all__: list[str] = []
