"""Policies: given a request and the health snapshot, which candidates, in what order, and why.

Pure: no I/O and no awaits in ranking; imports only snapshot types from ``health``. The policy
engine lands with its own issue; until then the gateway ranks by the ordered ``routes`` section of
its config.
"""

__all__: list[str] = []
