"""Prometheus metrics (SPEC section 9), served at http://127.0.0.1:PORT/metrics when
`BUTTONAPI_METRICS_PORT` / `--metrics-port` is set, through prometheus-client.

Counted as things happen: HTTP requests (a middleware), write batches and stored messages
(db.Observer). Read at scrape time from the server's own state, so that no code path of the
sockets or the limits is instrumented: sockets open, password checks waiting, limit
refusals, and the Discord outbox's rows with work left. Each app has its own registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import db

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MESSAGE_KINDS = ("public", "channel", "dm", "discord")
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclasses.dataclass
class Sources:
    """Where the scrape-time figures come from (the app factory wires them)."""

    sockets: Callable[[], dict[str, int]]  # Socket.IO connections by state
    engineio_sessions: Callable[[], int]
    password_checks_waiting: Callable[[], int]
    limit_refusals: Callable[[], dict[str, int]]  # 429s by limit, since start
    outbox: Callable[[], Awaitable[dict[str, int]]]  # outbox rows with work left, by state


class _ScrapeTime(Collector):
    """The figures read from the server's state when Prometheus scrapes."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.outbox: dict[str, int] = {}  # refreshed (asynchronously) before each scrape

    def collect(self) -> Iterator[Metric]:
        sockets = GaugeMetricFamily(
            "buttonapi_sockets", "Socket.IO connections open now", labels=["state"]
        )
        for state, count in self.sources.sockets().items():
            sockets.add_metric([state], count)
        yield sockets
        yield GaugeMetricFamily(
            "buttonapi_engineio_sessions",
            "Engine.IO sessions open now (BUTTONAPI_MAX_SOCKETS bounds them)",
            value=self.sources.engineio_sessions(),
        )
        yield GaugeMetricFamily(
            "buttonapi_password_checks_waiting",
            "bcrypt jobs queued for a worker thread",
            value=self.sources.password_checks_waiting(),
        )
        refusals = CounterMetricFamily(
            "buttonapi_limit_refusals", "requests refused with 429, by limit", labels=["limit"]
        )
        for limit, count in self.sources.limit_refusals().items():
            refusals.add_metric([limit], count)
        yield refusals
        outbox = GaugeMetricFamily(
            "buttonapi_discord_outbox_rows",
            "Discord outbox rows with work left, by state",
            labels=["state"],
        )
        for state, count in self.outbox.items():
            outbox.add_metric([state], count)
        yield outbox


class Metrics(db.Observer):
    """One app's metrics: its registry, its request middleware, the database's observer."""

    def __init__(self, sources: Sources) -> None:
        self.registry = CollectorRegistry()
        self.scrape_time = _ScrapeTime(sources)
        self.registry.register(self.scrape_time)
        self.requests = Counter(
            "buttonapi_http_requests", "HTTP requests answered, by endpoint and status",
            ["endpoint", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "buttonapi_http_request_duration_seconds",
            "time from a request to its answer (Socket.IO: the whole poll or WebSocket)",
            ["endpoint"], registry=self.registry,
        )  # fmt: skip
        self.messages = Counter(
            "buttonapi_messages_stored", "messages stored, by kind", ["kind"],
            registry=self.registry,
        )  # fmt: skip
        for kind in MESSAGE_KINDS:
            self.messages.labels(kind)
        self.batches = Counter(
            "buttonapi_db_write_batches", "write transactions committed", registry=self.registry
        )
        self.writes = Counter(
            "buttonapi_db_writes", "writes committed (a batch holds one or more)",
            registry=self.registry,
        )  # fmt: skip
        self.commit = Histogram(
            "buttonapi_db_commit_seconds", "time of one write batch, to its COMMIT and fsync",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._children: dict[tuple[Any, str], tuple[Any, Any]] = {}

    # db.Observer
    def batch_committed(self, writes: int, seconds: float) -> None:
        self.batches.inc()
        self.writes.inc(writes)
        self.commit.observe(seconds)

    def message_stored(self, kind: str) -> None:
        self.messages.labels(kind).inc()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started, status = time.perf_counter(), "500"
        try:
            response = await handler(request)
            status = str(response.status)
            return response
        except web.HTTPException as exc:
            status = str(exc.status)
            raise
        except asyncio.CancelledError:
            status = "499"  # the client went away first (nginx's word for it)
            raise
        finally:
            count, latency = self._series(request, status)
            count.inc()
            latency.observe(time.perf_counter() - started)

    def _series(self, request: web.Request, status: str) -> tuple[Any, Any]:
        """The request's counter and histogram (labels() is slow: each pair is kept)."""
        key = (request.match_info.route.resource, status)
        series = self._children.get(key)
        if series is None:
            endpoint = endpoint_of(request)
            series = self._children[key] = (
                self.requests.labels(endpoint, status),
                self.latency.labels(endpoint),
            )
        return series

    async def handle(self, request: web.Request) -> web.Response:
        """GET /metrics: Prometheus's text format."""
        self.scrape_time.outbox = await self.scrape_time.sources.outbox()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def endpoint_of(request: web.Request) -> str:
    """The route, not the path (a bounded set of labels): `/api/v3/login`, `/socket.io`,
    `/static/{name}`; `unmatched` for unknown paths and methods."""
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical.rstrip("/") or "/"


@contextlib.asynccontextmanager
async def serving(metrics: Metrics, port: int, sock: socket.socket | None) -> AsyncIterator[None]:
    """Serve /metrics on 127.0.0.1:port (or on `sock`, bound already) while inside."""
    app = web.Application()
    app.router.add_get("/metrics", metrics.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock) if sock else web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        yield
    finally:
        await runner.cleanup()
