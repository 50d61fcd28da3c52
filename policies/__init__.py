"""Policies: given a request and the health snapshot, which candidates, in what order, and why.

Pure: no I/O and no awaits in ranking; imports only snapshot types from ``health``.

- :mod:`policies.schema` — the policy document (pydantic); :mod:`policies.compile` — documents
  plus deployment facts → an immutable :class:`PolicySnapshot`.
- :mod:`policies.request` — what routing needs from one request (:class:`RequestFeatures`).
- :mod:`policies.engine` — :func:`rank`: route, filters, panic rule, strategy → :class:`Plan`;
  :mod:`policies.strategies` — the seven orderings, each with its algorithm in steps.
"""

from policies.compile import PolicyCompileError, PolicyProblem, check_policy, compile_policy
from policies.engine import prepare, rank
from policies.request import describe
from policies.schema import PolicyDocument
from policies.types import (
    DeploymentInfo,
    Exclusion,
    Plan,
    PolicySnapshot,
    RequestFeatures,
    RoutingError,
    Scored,
)
from policies.units import parse_duration

__all__ = [
    "DeploymentInfo",
    "Exclusion",
    "Plan",
    "PolicyCompileError",
    "PolicyDocument",
    "PolicyProblem",
    "PolicySnapshot",
    "RequestFeatures",
    "RoutingError",
    "Scored",
    "check_policy",
    "compile_policy",
    "describe",
    "parse_duration",
    "prepare",
    "rank",
]
