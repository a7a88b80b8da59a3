"""Fault injection in the lab (lab layer): break a running DR lab while a client keeps
opening connections through the VIP, and measure what the break cost and how long the
repair took. The CI test (tests/faults/) and the benchmark (bench/faults.py) run the
same suite; the benchmark commits its figures.

    client ── one new connection, one HTTP GET, every ``interval`` ──> VIP ── dir1 ── node1/node2

For every fault the runner notes the injection time, then polls the lab's state until
it is what it was before the fault: the director's table read back through the
backend (``open_backend(...).read()``: owned services, real servers, weights,
timeouts, the director's sysctls), for nftables also the ``kubelvs`` tables listed by
``nft -j`` (tables, chains, rules, map elements; handles and counters left out), and
on every worker: the VIP held (a bind to it succeeds) and the effective
``arp_ignore``/``arp_announce``.

- **failed requests**: the stream's requests that *ended* between this fault's
  injection and the next fault's (a request in flight at the injection is affected by
  it; one that ends later is counted where it ends).
- **repair time**: from the injection until the state is back (and the fault's own
  condition holds: a restarted process synced, a new service programmed) *and* traffic
  flows again (the first successful request after the window's last failed one). The
  poll that sees the state back ends after the repair: the figure is an upper bound,
  by at most one poll.

Classes (``Fault.removes_realserver``): a fault that takes real servers out of the
data path (a deleted table, service, slot or real server) may fail requests until it
is repaired; every other fault must fail none. A *tampering* fault (someone changed
the kernel or a node behind kubelvs) must be repaired within ``REPAIR_TARGET``
seconds, and the damage must have been real (the first poll saw it, or the repairing
process logged a repair). A restart, a config edit and the API server's outage have no
time target; they have their own conditions (the new process synced, the half-written
file changed nothing, the new service was programmed, nothing changed during the outage).

The stream runs in its own process inside the client namespace
(``python -m kubelvs.lab.faults stream``), so that the runner's polling cannot delay it;
both stamp with ``time.monotonic()`` (one clock for every process of the machine).
"""

from __future__ import annotations

from .catalogue import FAULTS
from .report import markdown
from .runner import attribute, flow_restored, run_suite
from .state import Image, NodeImage, nft_tables, node_image
from .stream import Request, read_requests, stream
from .suite import REPAIR_TARGET, Fault, FaultResult, Outcome, Settings, StandInApi, Suite, SuiteResult

__all__ = [
    "FAULTS",
    "REPAIR_TARGET",
    "Fault",
    "FaultResult",
    "Image",
    "NodeImage",
    "Outcome",
    "Request",
    "Settings",
    "StandInApi",
    "Suite",
    "SuiteResult",
    "attribute",
    "flow_restored",
    "markdown",
    "nft_tables",
    "node_image",
    "read_requests",
    "run_suite",
    "stream",
]
