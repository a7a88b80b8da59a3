"""Prometheus metrics of a director or a node agent, served on ``/metrics``.

Two kinds, kept apart:

- **What happened**, counted as it happens (``ProgramMetrics``): how long each step
  took (``kind="full|partial"``), how long from an event seen (a Kubernetes object or
  the config file changed, a health check flipped) to the kernel programmed, the
  operations applied, the errors. Ordinary prometheus_client instruments.
- **What is**, read at scrape time (``DirectorCollector``): the kernel's counters and
  weights through a backend of the collector's own (the director's backend is busy in
  its steps, in a worker thread, and a read from it would also reset what it knows
  of outside changes), and the director's health, drains, announcers and source as
  they are now. No copy of a kernel counter is kept between scrapes, except the
  counters of real servers that left (below).

Labels are node_exporter's IPVS collector's (``local_address``, ``local_port``,
``local_mark``, ``proto``, ``remote_address``, ``remote_port``) plus ``service`` (the
Service's ``namespace/name``, or the config file's service name). A virtual service's
counters are the sums of its real servers', plus what real servers that left had
counted (the collector remembers those), so that they only ever grow while the
program runs, as IPVS's own service counters do.

The server is an aiohttp app on the program's event loop; each scrape is rendered in
a worker thread so that the kernel read never stalls the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from .. import __version__
from ..backends import Backend
from ..errors import ConfigError, FieldError, KubelvsError
from ..model import NO_TRAFFIC, ObservedState, RealServerKey, RealServerStats, ServiceKey
from ..planner import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Operation,
    SetSysctl,
    SetTimeouts,
)
from ..sources.desired import SourceGauges

if TYPE_CHECKING:
    from .director import DirectorProgram

__all__ = [
    "DEFAULT_DIRECTOR_ADDRESS",
    "DEFAULT_NODE_ADDRESS",
    "DirectorCollector",
    "MetricsServer",
    "NodeCollector",
    "ProgramMetrics",
    "parse_address",
]

log = logging.getLogger("kubelvs.metrics")

# Counters without their `_created` twin series (twice the series for a timestamp no
# dashboard uses), as most exporters do.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Loopback only unless the user says otherwise. The node agent takes the next port: a
#: director is often also a node.
DEFAULT_DIRECTOR_ADDRESS = "127.0.0.1:9565"
DEFAULT_NODE_ADDRESS = "127.0.0.1:9566"

#: From a few ms (one real server on nftables) to a minute (a cold sync of 100,000).
SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_OPERATION_NAMES: Mapping[type, str] = {
    AddService: "add_service",
    EditService: "edit_service",
    DeleteService: "delete_service",
    AddRealServer: "add_realserver",
    EditRealServer: "edit_realserver",
    DeleteRealServer: "delete_realserver",
    SetTimeouts: "set_timeouts",
    SetSysctl: "set_sysctl",
}

#: keepalived_exporter's numbers for a VRRP instance's state.
VRRP_STATES = {"INIT": 0, "BACKUP": 1, "MASTER": 2, "FAULT": 3}

#: The classic text format (what prometheus_client and node_exporter serve by default).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:9565`` for IPv6) -> (host, port); ``off`` -> None."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError([FieldError("--metrics-address", f"{text!r} is not HOST:PORT (or off)")])
    return host, int(port)


class ProgramMetrics:
    """What happened, for one program (its own registry: tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.sync_duration = Histogram(
            "kubelvs_sync_duration_seconds",
            "How long one reconcile step took: full (the kernel read and every service "
            "compared) or partial (only what changed).",
            ["kind"],
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.programming = Histogram(
            "kubelvs_network_programming_duration_seconds",
            "From the first change seen (object, config file, health check) to the kernel "
            "programmed with it, coalescing included.",
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.operations = Counter(
            "kubelvs_sync_operations", "Operations applied to the kernel, by kind.", ["op"], registry=r
        )
        self.errors = Counter("kubelvs_errors", "Errors, by kind.", ["kind"], registry=r)
        build = Gauge("kubelvs_build_info", "The running kubelvs version.", ["version"], registry=r)
        build.labels(version=__version__).set(1)
        self.pages: list[Callable[[], bytes]] = []  # parts of the page written without the registry

    def page(self) -> bytes:
        """The whole /metrics page, read now."""
        return generate_latest(self.registry) + b"".join(part() for part in self.pages)

    def step_done(self, full: bool, seconds: float, since_change: float | None) -> None:
        self.sync_duration.labels(kind="full" if full else "partial").observe(seconds)
        if since_change is not None:
            self.programming.observe(since_change)

    def step_failed(self, exc: KubelvsError) -> None:
        self.errors.labels(kind="sync").inc()

    def applied(self, ops: Iterable[Operation]) -> None:
        """The director's kernel operations, by kind (``add_realserver``, ...)."""
        self.count_operations(_OPERATION_NAMES.get(type(op), "other") for op in ops)

    def count_operations(self, names: Iterable[str]) -> None:
        for name, n in collections.Counter(names).items():
            self.operations.labels(op=name).inc(n)

    def error(self, kind: str, n: int = 1) -> None:
        if n:
            self.errors.labels(kind=kind).inc(n)


@dataclass(slots=True)
class _Departed:
    """Counters of a virtual service's real servers that left, added to its totals."""

    conns: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_bytes: int = 0
    out_bytes: int = 0

    def add(self, s: RealServerStats) -> None:
        self.conns += s.conns
        self.in_packets += s.in_packets
        self.out_packets += s.out_packets
        self.in_bytes += s.in_bytes
        self.out_bytes += s.out_bytes


@dataclass(slots=True)
class _Totals:
    departed: dict[ServiceKey, _Departed] = field(default_factory=dict)
    last: dict[tuple[ServiceKey, RealServerKey], RealServerStats] = field(default_factory=dict)

    def update(
        self,
        now: Mapping[tuple[ServiceKey, RealServerKey], RealServerStats],
        services: Collection[ServiceKey],
    ) -> None:
        """Remember what left since the last scrape (or was deleted and added again:
        its counters went back)."""
        for pair, before in self.last.items():
            after = now.get(pair)
            if after is None or after.conns < before.conns or after.in_packets < before.in_packets:
                self.departed.setdefault(pair[0], _Departed()).add(before)
        for key in [k for k in self.departed if k not in services]:
            del self.departed[key]  # the service itself is gone: its totals start again
        self.last = dict(now)


class DirectorCollector:
    """What is, read when Prometheus asks (a prometheus_client custom collector)."""

    def __init__(self, program: DirectorProgram, open_reader: Callable[[], Backend]) -> None:
        self.program = program
        self._open_reader = open_reader
        self._reader: Backend | None = None
        self._lock = threading.Lock()  # scrapes may overlap; the reader is not thread-safe
        self._totals = _Totals()

    def close(self) -> None:
        with self._lock:
            self._drop_reader()

    def _drop_reader(self) -> None:
        if self._reader is not None and self._reader is not self.program.backend:
            self._reader.close()
        self._reader = None

    def collect(self) -> Iterator[Metric]:
        """The announcers' and the source's families (few: prometheus_client renders them)."""
        yield from self._daemons()
        yield from self._source(self.program.source.gauges())

    def render_kernel(self) -> bytes:
        """The per-service and per-real-server families, read from the kernel now and
        written straight in the text format: prometheus_client's renderer validates
        and escapes every label of every sample (about 20 us per sample here: 400 ms
        for 100 VIPs x 20 real servers); these labels are known good, and each label
        set is built once per real server instead of once per sample."""
        with self._lock:
            try:
                observed = self._read()
            except KubelvsError as exc:
                log.warning("metrics: reading the kernel: %s", exc)
                self.program.metrics.error("metrics_read")
                return b""
            return self._kernel(observed).encode()

    def _read(self) -> ObservedState:
        if self._reader is None:
            self._reader = self._open_reader()
        try:
            return self._reader.read()
        except KubelvsError:
            self._drop_reader()  # opened again on the next scrape
            raise

    def _kernel(self, observed: ObservedState) -> str:
        program = self.program
        desired = program.last_synced
        owns = desired.ownership.owns if desired is not None else None
        names = desired.services if desired is not None else {}
        health = program.health_by_realserver()
        draining = program.director.drains.keys()
        stats = {pair: st for pair, st in observed.stats.items() if owns is None or owns(pair[0])}
        self._totals.update(stats, observed.services.keys())
        out: dict[str, list[str]] = {name: [] for name in _KERNEL_FAMILIES}  # family -> its samples
        (
            vs_conns,
            vs_packets,
            vs_bytes,
            rs_sched,
            rs_packets,
            rs_bytes,
            rs_conns,
            rs_weight,
            rs_up,
            rs_draining,
        ) = out.values()
        for key, vs in observed.services.items():
            if owns is not None and not owns(key):
                continue
            wanted = names.get(key)
            base = _service_labels(key, wanted.name if wanted is not None else vs.name)
            departed = self._totals.departed.get(key)
            total = replace(departed) if departed is not None else _Departed()
            for rs in vs.realservers:
                st = stats.get((key, rs.key), NO_TRAFFIC)
                total.add(st)
                labels = f'{base},remote_address="{rs.address}",remote_port="{rs.port}"'
                rs_sched.append(f"{{{labels}}} {st.conns}")
                rs_packets.append(f'{{{labels},direction="in"}} {st.in_packets}')
                rs_packets.append(f'{{{labels},direction="out"}} {st.out_packets}')
                rs_bytes.append(f'{{{labels},direction="in"}} {st.in_bytes}')
                rs_bytes.append(f'{{{labels},direction="out"}} {st.out_bytes}')
                rs_conns.append(f'{{{labels},state="active"}} {st.active_conns}')
                rs_conns.append(f'{{{labels},state="inactive"}} {st.inactive_conns}')
                rs_weight.append(f"{{{labels}}} {rs.weight}")
                up = health.get((key, rs.key), 1)
                if up is not None:
                    rs_up.append(f"{{{labels}}} {up}")
                rs_draining.append(f"{{{labels}}} {1 if (key, rs.key) in draining else 0}")
            vs_conns.append(f"{{{base}}} {total.conns}")
            vs_packets.append(f'{{{base},direction="in"}} {total.in_packets}')
            vs_packets.append(f'{{{base},direction="out"}} {total.out_packets}')
            vs_bytes.append(f'{{{base},direction="in"}} {total.in_bytes}')
            vs_bytes.append(f'{{{base},direction="out"}} {total.out_bytes}')
        page: list[str] = []
        for name, (kind, text) in _KERNEL_FAMILIES.items():
            page.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")
            page.extend(f"{name}{line}\n" for line in out[name])
        return "".join(page)

    def _daemons(self) -> Iterator[Metric]:
        program = self.program
        vrrp = GaugeMetricFamily(
            "kubelvs_vrrp_state",
            "The VRRP instance's state in keepalived: 0 init, 1 backup, 2 master, 3 fault.",
            labels=("instance",),
        )
        for name, (state, _) in sorted(program.vrrp.roles.items()):
            vrrp.add_metric([name], VRRP_STATES.get(state, 0))
        bgp = GaugeMetricFamily(
            "kubelvs_bgp_session_up", "1 when the BGP session with the peer is established.", labels=("peer",)
        )
        for peer, state in sorted(program.bgp.sessions.items()):
            bgp.add_metric([peer], 1 if state == "Established" else 0)
        announced = GaugeMetricFamily("kubelvs_bgp_announced_vips", "VIPs bird announces to the BGP peers.")
        announced.add_metric([], len(program.bgp.announced))
        yield from (vrrp, bgp, announced)

    @staticmethod
    def _source(gauges: SourceGauges) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "kubelvs_kubernetes_watch_restarts",
            "Watches of the Kubernetes API started again after the first (timeouts, "
            "errors, 410 Gone), by kind.",
            labels=("kind",),
        )
        for kind, n in sorted(gauges.watch_restarts.items()):
            restarts.add_metric([kind], n)
        ipam = GaugeMetricFamily(
            "kubelvs_ipam_addresses",
            "Addresses of each LoadBalancer pool, in use or free.",
            labels=("pool", "state"),
        )
        for pool, (in_use, free) in sorted(gauges.ipam.items()):
            ipam.add_metric([pool, "in_use"], in_use)
            ipam.add_metric([pool, "free"], free)
        yield from (restarts, ipam)


#: The kernel's families: name -> (type, help), in page order.
_KERNEL_FAMILIES: Mapping[str, tuple[str, str]] = {
    "kubelvs_virtual_service_connections_total": (
        "counter",
        "Connections scheduled to the virtual service's real servers (IPVS; nftables keeps "
        "no connection table).",
    ),
    "kubelvs_virtual_service_packets_total": (
        "counter",
        "Packets of the virtual service: in (to real servers), out (replies through the director: NAT).",
    ),
    "kubelvs_virtual_service_bytes_total": ("counter", "Bytes of the virtual service, in and out."),
    "kubelvs_realserver_scheduled_connections_total": (
        "counter",
        "Connections scheduled to the real server.",
    ),
    "kubelvs_realserver_packets_total": ("counter", "Packets to (in) and from (out) the real server."),
    "kubelvs_realserver_bytes_total": ("counter", "Bytes to (in) and from (out) the real server."),
    "kubelvs_realserver_connections": (
        "gauge",
        "Connections in the director's table (IPVS): active (established) and inactive (others).",
    ),
    "kubelvs_realserver_weight": ("gauge", "The real server's weight in the kernel."),
    "kubelvs_realserver_up": (
        "gauge",
        "1 when the real server passes its health check (or has none), 0 when it fails it; "
        "absent until its first verdict.",
    ),
    "kubelvs_realserver_draining": (
        "gauge",
        "1 while the real server drains (weight 0, deleted once without connections or at "
        "the drain timeout).",
    ),
}


def _service_labels(key: ServiceKey, name: str) -> str:
    """node_exporter's labels of a virtual service, plus its name (escaped: a config file's
    names are free text)."""
    address = "" if key.address is None else str(key.address)
    mark = str(key.fwmark) if key.fwmark else ""
    name = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (
        f'local_address="{address}",local_port="{key.port}",local_mark="{mark}",'
        f'proto="{key.protocol.name}",service="{name}"'
    )


class NodeCollector:
    """What the node agent holds, read at scrape time."""

    def __init__(self, vips: Callable[[], int]) -> None:
        self._vips = vips

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "kubelvs_node_vips", "VIPs the node agent holds (on lo or its dummy device)."
        )
        held.add_metric([], self._vips())
        yield held


class MetricsServer:
    """``/metrics`` over HTTP on the program's event loop. An address that cannot be
    bound (in use) is logged and tried again every ``RETRY_SECONDS``, as kube-proxy
    does: metrics never keep a director from programming the kernel."""

    RETRY_SECONDS = 5.0

    def __init__(self, metrics: ProgramMetrics, host: str, port: int) -> None:
        self.program_metrics = metrics
        self.host, self.port = host, port
        self.listening = asyncio.Event()

    async def serve(self, stop: asyncio.Event) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            while not stop.is_set():
                try:
                    await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
                    break
                except OSError as exc:
                    self.program_metrics.error("metrics_listen")
                    log.error(
                        "metrics: cannot listen on %s:%d (%s); trying again in %.0f s",
                        self.host,
                        self.port,
                        exc.strerror or exc,
                        self.RETRY_SECONDS,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.RETRY_SECONDS)
            else:
                return
            log.info("metrics on http://%s:%d/metrics", self.host, self.port)
            self.listening.set()
            await stop.wait()
        finally:
            await runner.cleanup()

    async def _scrape(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.program_metrics.page)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
