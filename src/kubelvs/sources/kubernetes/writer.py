"""Writes what the mapping decided back to the API: Service status and Events.

Only the leader calls it. Writes are idempotent and remembered, so a reconcile that
decides the same thing again writes nothing; an Event is posted once per
(Service, reason, message) while the condition lasts, and again if it comes back.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping

from .api import ApiError, KubeApi
from .leader import micro_time
from .objects import EventSpec, ObjectId, Service
from .snapshot import MappingResult

__all__ = ["COMPONENT", "StatusWriter"]

log = logging.getLogger("kubelvs.kubernetes.writer")

COMPONENT = "kubelvs-director"


class StatusWriter:
    def __init__(self, api: KubeApi, *, identity: str) -> None:
        self.api = api
        self.identity = identity
        self._written: dict[
            ObjectId, tuple[tuple[str, ...], tuple[str, ...]]
        ] = {}  # id -> (wrote, status we saw then)
        self._posted: set[tuple[str, str, str, str]] = set()
        self.status_writes = 0
        self.event_posts = 0

    async def write(self, result: MappingResult, services: Mapping[ObjectId, Service]) -> None:
        for sid in list(self._written):
            if sid not in result.status:
                del self._written[sid]
        for sid, ips in result.status.items():  # every Service, every sync: no sort
            svc = services.get(sid)
            if svc is None:
                continue
            if self._written.get(sid) == (ips, svc.ingress_ips):
                continue  # written; the watch has not brought it back yet
            ingress = [{"ip": ip, "ipMode": "VIP"} for ip in ips] if ips else None
            body = {"status": {"loadBalancer": {"ingress": ingress}}}
            try:
                await self.api.merge_patch(f"/api/v1/namespaces/{sid[0]}/services/{sid[1]}/status", body)
            except ApiError as exc:
                log.warning(
                    "status of Service %s/%s not written (retried on the next reconcile): %s", *sid, exc
                )
                continue
            self._written[sid] = (ips, svc.ingress_ips)
            self.status_writes += 1
        current = {_event_key(e) for e in result.events}
        self._posted &= current
        for ev in result.events:
            key = _event_key(ev)
            if key in self._posted:
                continue
            if await self._post(ev):
                self._posted.add(key)

    async def post(self, events: list[EventSpec]) -> None:
        """Events that happened once (not conditions that last): each posted now."""
        for ev in events:
            await self._post(ev)

    async def _post(self, ev: EventSpec) -> bool:
        try:
            await self.api.post(f"/api/v1/namespaces/{ev.namespace}/events", self._event_body(ev))
        except ApiError as exc:
            log.warning("Event %s for %s/%s not posted: %s", ev.reason, ev.namespace, ev.name, exc)
            return False
        self.event_posts += 1
        log.info(
            "Event %s %s on Service %s/%s: %s",
            ev.type,
            ev.reason,
            ev.namespace,
            ev.name,
            ev.message,
            extra={"reason": ev.reason, "service": f"{ev.namespace}/{ev.name}", "event_type": ev.type},
        )
        return True

    def _event_body(self, ev: EventSpec) -> dict[str, object]:
        now = time.time()
        stamp = micro_time(now).split(".")[0] + "Z"  # Event timestamps are Time (seconds)
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ev.name}.{secrets.token_hex(8)}", "namespace": ev.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Service",
                "name": ev.name,
                "namespace": ev.namespace,
                "uid": ev.uid,
            },
            "reason": ev.reason,
            "message": ev.message,
            "type": ev.type,
            "source": {"component": COMPONENT, "host": self.identity},
            "reportingComponent": "kubelvs.io/director",
            "reportingInstance": self.identity,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }


def _event_key(ev: EventSpec) -> tuple[str, str, str, str]:
    return (ev.uid, ev.name, ev.reason, ev.message)
