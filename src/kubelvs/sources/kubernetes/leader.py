"""Lease-based leader election (coordination.k8s.io/v1) for the status/Event writer.

Only writing Service status and Events needs one writer; every director programs its
kernel from the same desired state at all times, so the data plane never waits for
an election. The protocol is client-go's: the holder renews ``spec.renewTime`` every
``renew_seconds``; anyone may take the Lease once ``renewTime + leaseDurationSeconds``
has passed; every write carries the resourceVersion it read, so of two contenders
the API server lets exactly one win (409 for the other). A leader that cannot renew
for ``lease_seconds`` stops writing before anyone else can have taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .api import ApiError, KubeApi

__all__ = ["LeaderElector", "micro_time", "parse_time"]

log = logging.getLogger("kubelvs.kubernetes.leader")


def micro_time(t: float) -> str:
    """A MicroTime as the API writes it: ``2026-11-26T06:00:00.123456Z``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_seconds = lease_seconds, renew_seconds
        self.clock = clock
        self._renewed_at: float | None = None  # our clock when we last renewed successfully
        self.transitions = 0  # times this elector became leader
        self.on_elected: Callable[[], None] | None = None  # e.g. wake the writer at once

    @property
    def is_leader(self) -> bool:
        # Leadership ends on our own clock, lease_seconds after the last good renewal,
        # whatever the API says: that is before anyone else may take the Lease.
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.lease_seconds

    def _spec(self, now: float, previous: dict[str, Any] | None) -> dict[str, Any]:
        prev = previous or {}
        taking_over = prev.get("holderIdentity") != self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": micro_time(now) if taking_over else prev.get("acquireTime", micro_time(now)),
            "renewTime": micro_time(now),
            "leaseTransitions": int(prev.get("leaseTransitions") or 0) + (1 if taking_over and prev else 0),
        }

    async def try_acquire_or_renew(self) -> bool:
        now = self.clock()
        was = self.is_leader
        try:
            try:
                lease = await self.api.get(f"{self.path}/{self.name}")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, None),
                }
                await self.api.post(self.path, body)
                return self._won(was, now)
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            renewed = parse_time(spec.get("renewTime"))
            duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
            expired = renewed is None or now > renewed + duration
            if holder and holder != self.identity and not expired:
                self._renewed_at = None
                return False
            lease["spec"] = self._spec(now, spec)
            await self.api.put(f"{self.path}/{self.name}", lease)
            return self._won(was, now)
        except ApiError as exc:
            if exc.status == 409:
                self._renewed_at = None  # someone else wrote first
                return False
            log.warning("leader election: %s", exc)
            return self.is_leader

    def _won(self, was: bool, now: float) -> bool:
        self._renewed_at = now
        if not was:
            self.transitions += 1
            if self.on_elected is not None:
                self.on_elected()
            log.info("became the status writer (Lease %s/%s)", self.namespace, self.name)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.try_acquire_or_renew()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_seconds)

    async def release(self) -> None:
        """Give the Lease up at shutdown so another director takes over at once."""
        if not self.is_leader:
            return
        self._renewed_at = None
        try:
            lease = await self.api.get(f"{self.path}/{self.name}")
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") == self.identity:
                spec["holderIdentity"] = ""
                spec["leaseDurationSeconds"] = 1
                lease["spec"] = spec
                await self.api.put(f"{self.path}/{self.name}", lease)
        except ApiError as exc:
            log.warning("could not release the Lease: %s", exc)
