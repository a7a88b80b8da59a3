"""A stand-in Kubernetes API server that speaks the real wire protocol.

A real kube-apiserver runs in tests/realkube; this one stays for what a real one cannot
do on demand (500s, watches cut mid-stream, outages on the same port) and for speed. It
serves what kube-apiserver serves for the calls kubelvs makes:

- list: ``GET /api/v1/services`` etc. with ``limit``/``continue`` pages, a List object
  with ``metadata.resourceVersion``; an expired continue token answers 410.
- watch: ``?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S``
  answers 200 with a chunked stream of ``{"type", "object"}`` lines: the changes after
  N from the history, then live ones; BOOKMARK events carry only
  ``metadata.resourceVersion``; a resourceVersion older than the compacted history gets
  an ``ERROR`` event with a 410 Status ("too old resource version"), as the real server
  does (or an HTTP 410, with ``gone_as_http``); the stream ends at timeoutSeconds.
- ``PATCH .../services/NAME/status`` (merge patch), ``POST .../events``,
  ``GET/POST/PUT`` coordination.k8s.io/v1 Leases with resourceVersion conflicts (409).
- faults: ``fail_next(n, 500)``, ``drop_watches()`` (connections aborted mid-stream),
  ``stop()``/``start()`` on the same port (an outage).

Objects are the JSON the tests build (k8sobjects.py); resourceVersions are one
cluster-wide counter, as etcd's revision is. As on the real server, an object created
without ``creationTimestamp`` gets the current second, and an update keeps the first one.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import threading
import time
from typing import Any

from aiohttp import web

from kubelvs.sources.kubernetes.api import KubeApi

Obj = dict[str, Any]

KIND_OF_PATH = {
    "/api/v1/services": "Service",
    "/apis/discovery.k8s.io/v1/endpointslices": "EndpointSlice",
    "/api/v1/nodes": "Node",
}
API_VERSION = {
    "Service": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Node": "v1",
    "Lease": "coordination.k8s.io/v1",
    "Event": "v1",
}


def status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeApiServer:
    def __init__(self, *, bookmark_interval: float = 0.2) -> None:
        self.rv = 1000
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {
            k: {} for k in ("Service", "EndpointSlice", "Node", "Lease")
        }
        self.history: list[tuple[int, str, str, Obj]] = []  # (rv, kind, type, object)
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = False
        self.events: list[Obj] = []
        self.status_patches: list[tuple[str, str, Obj]] = []
        self.requests: list[tuple[str, str]] = []  # (method, path?query)
        self.authorization: set[str] = set()  # Authorization headers seen
        self._fail: list[int] = []
        self._watchers: set[asyncio.Queue[tuple[str, str, Obj] | None]] = set()
        self._responses: set[web.StreamResponse] = set()
        self._sorted: dict[str, tuple[int, list[tuple[tuple[str, str], Obj]]]] = {}  # kind -> (rv, items)
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._runner is None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
            await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def stop(self) -> None:
        """An outage: stop listening and close every connection, kept-alive ones included
        (a stopped site alone would still serve them). ``start`` brings it back."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._site = None

    async def close(self) -> None:
        await self.stop()

    async def client(self) -> KubeApi:
        return KubeApi.for_url(self.url)

    # ------------------------------------------------------------ faults

    def fail_next(self, n: int, code: int = 500) -> None:
        self._fail += [code] * n

    def drop_watches(self) -> None:
        for resp in list(self._responses):
            task = getattr(resp, "_kubelvs_task", None)
            transport = resp._req.transport if resp._req is not None else None
            if transport is not None:
                transport.abort()
            if task is not None:
                task.cancel()
        for q in list(self._watchers):
            q.put_nowait(None)

    def compact(self) -> None:
        """Forget the history: watches from any earlier resourceVersion get 410."""
        self.history.clear()
        self.compacted = self.rv + 1

    # ------------------------------------------------------------ objects

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def put(self, obj: Obj) -> Obj:
        """Create or update (like kubectl apply): a new resourceVersion and a watch event."""
        kind = obj["kind"]
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        key = (meta.get("namespace", "") if kind != "Node" else "", meta["name"])
        previous = self.objects[kind].get(key)
        if previous is None:
            etype = "ADDED"
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        else:
            etype = "MODIFIED"
            if "creationTimestamp" in previous["metadata"]:
                meta["creationTimestamp"] = previous["metadata"]["creationTimestamp"]
        meta["resourceVersion"] = self._bump()
        self.objects[kind][key] = obj
        self._emit(kind, etype, obj)
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        obj = self.objects[kind].pop((namespace if kind != "Node" else "", name))
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit(kind, "DELETED", obj)

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        return self.objects[kind][(namespace if kind != "Node" else "", name)]

    def _emit(self, kind: str, etype: str, obj: Obj) -> None:
        self.history.append((int(obj["metadata"]["resourceVersion"]), kind, etype, obj))
        for q in list(self._watchers):
            q.put_nowait((kind, etype, obj))

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if "Authorization" in request.headers:
            self.authorization.add(request.headers["Authorization"])
        if self._fail:
            code = self._fail.pop(0)
            return web.json_response(status(code, "InternalError", "injected failure"), status=code)
        path = request.path
        if path in KIND_OF_PATH and request.method == "GET":
            kind = KIND_OF_PATH[path]
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, kind)
            return self._list(request, kind)
        parts = path.strip("/").split("/")
        # /api/v1/namespaces/{ns}/services/{name}/status
        if (
            len(parts) == 7
            and parts[:3] == ["api", "v1", "namespaces"]
            and parts[4] == "services"
            and parts[6] == "status"
        ):
            return await self._service_status(request, parts[3], parts[5])
        if (
            len(parts) == 5
            and parts[:3] == ["api", "v1", "namespaces"]
            and parts[4] == "events"
            and request.method == "POST"
        ):
            ev = await request.json()
            ev.setdefault("metadata", {})["resourceVersion"] = self._bump()
            self.events.append(ev)
            return web.json_response(ev, status=201)
        # /apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]
        if parts[:3] == ["apis", "coordination.k8s.io", "v1"] and len(parts) >= 6 and parts[5] == "leases":
            return await self._lease(request, parts[4], parts[6] if len(parts) > 6 else None)
        return web.json_response(status(404, "NotFound", f"the server could not find {path}"), status=404)

    def _list(self, request: web.Request, kind: str) -> web.Response:
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue")
        # Sorted once per state: a paginated list of 100,000 objects asks for 200 pages,
        # and sorting the whole collection for each made the list quadratic.
        cached = self._sorted.get(kind)
        if cached is None or cached[0] != self.rv:
            cached = self._sorted[kind] = (self.rv, sorted(self.objects[kind].items()))
        items = cached[1]
        start, list_rv = 0, self.rv
        if token:
            state = json.loads(base64.b64decode(token))
            if state["rv"] < self.compacted:
                return web.json_response(
                    status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result.",
                    ),
                    status=410,
                )
            start, list_rv = state["start"], state["rv"]
        page = items[start : start + limit] if limit else items[start:]
        # List items carry no kind/apiVersion, as on a real server. A shallow copy: the
        # page is encoded at once (a deep copy per item was most of a 10,000-object list).
        out_items = [{k: v for k, v in obj.items() if k != "kind" and k != "apiVersion"} for _, obj in page]
        meta: Obj = {"resourceVersion": str(list_rv)}
        if limit and start + limit < len(items):
            meta["continue"] = base64.b64encode(
                json.dumps({"rv": list_rv, "start": start + limit}).encode()
            ).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        return web.json_response(
            {"kind": f"{kind}List", "apiVersion": API_VERSION[kind], "metadata": meta, "items": out_items}
        )

    async def _watch(self, request: web.Request, kind: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.rv)
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        if since < self.compacted and self.gone_as_http:
            return web.json_response(
                status(410, "Expired", f"too old resource version: {since} ({self.compacted})"), status=410
            )
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        resp._kubelvs_task = asyncio.current_task()  # type: ignore[attr-defined]
        self._responses.add(resp)

        async def send(etype: str, obj: Obj) -> None:
            await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

        queue: asyncio.Queue[tuple[str, str, Obj] | None] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            if since < self.compacted:
                await send(
                    "ERROR", status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
                )
                return resp
            for rv, k, etype, obj in list(self.history):
                if k == kind and rv > since:
                    await send(etype, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), min(left, self.bookmark_interval))
                except TimeoutError:
                    if bookmarks:
                        await send(
                            "BOOKMARK",
                            {
                                "kind": kind,
                                "apiVersion": API_VERSION[kind],
                                "metadata": {"resourceVersion": str(self.rv)},
                            },
                        )
                    continue
                if item is None:
                    break
                k, etype, obj = item
                if k == kind:
                    await send(etype, obj)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
            self._responses.discard(resp)
        return resp

    async def _service_status(self, request: web.Request, ns: str, name: str) -> web.Response:
        key = (ns, name)
        if key not in self.objects["Service"]:
            return web.json_response(status(404, "NotFound", f'services "{name}" not found'), status=404)
        obj = copy.deepcopy(self.objects["Service"][key])
        if request.method == "PATCH":
            if "merge-patch" not in request.headers.get("Content-Type", ""):
                return web.json_response(status(415, "UnsupportedMediaType", "use a merge patch"), status=415)
            patch = await request.json()
            self.status_patches.append((ns, name, patch))
            obj["status"] = _merge(obj.get("status") or {}, patch.get("status") or {})
            return web.json_response(self.put(obj))
        if request.method == "GET":
            return web.json_response(obj)
        return web.json_response(status(405, "MethodNotAllowed", request.method), status=405)

    async def _lease(self, request: web.Request, ns: str, name: str | None) -> web.Response:
        leases = self.objects["Lease"]
        if request.method == "GET" and name:
            if (ns, name) not in leases:
                return web.json_response(
                    status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found'), status=404
                )
            return web.json_response(leases[(ns, name)])
        body = await request.json()
        body.setdefault("metadata", {})
        lname = name or body["metadata"]["name"]
        current = leases.get((ns, lname))
        if request.method == "POST":
            if current is not None:
                return web.json_response(
                    status(409, "AlreadyExists", f'leases "{lname}" already exists'), status=409
                )
        elif request.method == "PUT":
            if current is None:
                return web.json_response(status(404, "NotFound", lname), status=404)
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return web.json_response(status(409, "Conflict", "the object has been modified"), status=409)
        else:
            return web.json_response(status(405, "MethodNotAllowed", request.method), status=405)
        body["metadata"].update(namespace=ns, name=lname, resourceVersion=self._bump())
        body["kind"], body["apiVersion"] = "Lease", "coordination.k8s.io/v1"
        leases[(ns, lname)] = body
        return web.json_response(body, status=201 if request.method == "POST" else 200)


def _merge(base: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch."""
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class ServerThread:
    """The stand-in API server on its own event loop, for code that runs asyncio.run itself."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = FakeApiServer()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, fn: Any, *args: Any) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(5)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
