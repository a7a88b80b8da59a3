"""HTTP to the Kubernetes API server, through kubernetes_asyncio.

Why kubernetes_asyncio (not lightkube): it is maintained with the Kubernetes
releases, is built on aiohttp (which the test stand-in server uses too), loads
kubeconfig files (exec plugins, client certificates, token refresh) and the
in-cluster service account, and its ``call_api(..., _preload_content=False)`` hands
us the raw response. That matters twice: the watch loop must see the wire protocol
itself (resourceVersion, BOOKMARK, ERROR 410, chunked streams) to handle it
deliberately, and decoding 10,000 Services into generated model classes would cost
more than the whole mapping. We read JSON and keep only the fields we use
(``objects``).

Errors come out as ``ApiError`` (status, reason, message) or ``Gone`` (410), never as
aiohttp or kubernetes_asyncio types, so callers handle one hierarchy.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from ...errors import KubelvsError

__all__ = ["API_VERSIONS", "PATHS", "ApiError", "Gone", "KubeApi"]

#: Cluster-wide list/watch path of each kind we read.
PATHS = {
    "Service": "/api/v1/services",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/endpointslices",
    "Node": "/api/v1/nodes",
}
API_VERSIONS = {"Service": "v1", "EndpointSlice": "discovery.k8s.io/v1", "Node": "v1"}

_AUTH = ["BearerToken"]


class ApiError(KubelvsError):
    """The API server answered with an error status, or could not be reached (status 0)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"API server: {status} {reason}" + (f": {message}" if message else ""))


class Gone(ApiError):
    """410: the resourceVersion is older than the server keeps; re-list."""


def _error(status: int, body: bytes | str) -> ApiError:
    reason, message = "", ""
    try:
        doc = json.loads(body)
        reason, message = str(doc.get("reason", "")), str(doc.get("message", ""))[:256]
    except (ValueError, AttributeError, RecursionError):
        message = (body.decode(errors="replace") if isinstance(body, bytes) else str(body))[:256]
    cls = Gone if status == 410 else ApiError
    return cls(status, reason or "Error", message)


class KubeApi:
    """A thin async client: JSON in, JSON out, over one kubernetes_asyncio ApiClient."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._api = api_client

    @classmethod
    async def connect(cls, kubeconfig: Path | None = None) -> KubeApi:
        """``kubeconfig``, else the in-cluster service account (when run as a pod), else
        ``~/.kube/config``."""
        cfg = k8s_client.Configuration()
        try:
            if kubeconfig is not None:
                await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                # kubernetes_asyncio leaves this function unannotated.
                k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            else:
                await k8s_config.load_kube_config(client_configuration=cfg)
        except (k8s_config.ConfigException, OSError, ValueError) as exc:
            where = str(kubeconfig) if kubeconfig else "in-cluster service account or ~/.kube/config"
            raise ApiError(
                0, "NoConfig", f"cannot load the Kubernetes client config ({where}): {exc}"
            ) from exc
        return cls(k8s_client.ApiClient(configuration=cfg))

    @classmethod
    def for_url(cls, url: str, token: str | None = None) -> KubeApi:
        """A client for a plain-HTTP API server (the test stand-in)."""
        cfg = k8s_client.Configuration(host=url)
        if token:
            cfg.api_key = {"BearerToken": token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(k8s_client.ApiClient(configuration=cfg))

    async def close(self) -> None:
        await self._api.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | aiohttp.ClientTimeout | None = 30.0,
    ) -> aiohttp.ClientResponse:
        try:
            resp: aiohttp.ClientResponse = await self._api.call_api(
                path,
                method,
                query_params=list((params or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=_AUTH,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            raise _error(exc.status or 0, exc.body or exc.reason or "") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        if resp.status >= 300:
            try:
                data = await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                data = b""
            finally:
                resp.release()
            raise _error(resp.status, data)
        return resp

    async def request_json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = await self._call(method, path, **kw)
        try:
            data = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        finally:
            resp.release()
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ApiError(resp.status, "BadResponse", "the response is not JSON") from exc
        if not isinstance(doc, dict):
            raise ApiError(resp.status, "BadResponse", "the response is not a JSON object")
        return doc

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self.request_json("GET", path, params=params)

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request_json("POST", path, body=dict(body))

    async def put(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request_json("PUT", path, body=dict(body))

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request_json(
            "PATCH", path, body=dict(body), content_type="application/merge-patch+json"
        )

    async def stream(
        self, path: str, params: Mapping[str, Any], *, read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch, one JSON object per line of the chunked response.

        ``read_timeout``: seconds without a byte before the stream counts as dead (the
        server sends bookmarks and ends the stream at ``timeoutSeconds``)."""
        resp = await self._call(
            "GET", path, params=params, timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=read_timeout)
        )
        buf = b""
        try:
            async for chunk in resp.content.iter_any():
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if line.strip():
                        yield _event(line)
            if buf.strip():
                yield _event(buf)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(0, "StreamBroken", f"{type(exc).__name__}: {exc}") from exc
        finally:
            resp.release()


def _event(line: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ApiError(0, "BadWatchEvent", f"not JSON: {line[:80]!r}") from exc
    if not isinstance(doc, dict) or "type" not in doc or not isinstance(doc.get("object"), dict):
        raise ApiError(0, "BadWatchEvent", f"not a watch event: {line[:80]!r}")
    return doc
