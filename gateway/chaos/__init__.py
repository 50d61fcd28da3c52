"""The chaos suite: run the real gateway against upstreams that fail on a timeline, and judge it.

A scenario file (:mod:`.scenario`) names the deployments, the traffic, the faults and what must
still hold. The runner starts simulated upstreams in process, one or two ``gateway serve`` child
processes and, when needed, a private redis-server; drives traffic; applies the faults; and writes
``result.json``, ``report.md`` and ``timeline.png``. Nothing here is imported on the gateway's
request path.
"""
