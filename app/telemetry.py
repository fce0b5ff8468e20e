"""Prometheus metrics, one registry per app (so several apps in one process never collide)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TIME_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Telemetry:
    """Every metric HeadScope exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("headscope_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "headscope_request_seconds", "HTTP request latency", ["route"], buckets=TIME_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "headscope_queue_depth", "requests admitted and waiting for or using the model", registry=r
        )
        self.queue_wait = Histogram(
            "headscope_queue_wait_seconds", "time from admission to the model thread", buckets=TIME_BUCKETS, registry=r
        )
        self.model_time = Histogram(
            "headscope_model_seconds", "time the model thread spent on a request", buckets=TIME_BUCKETS, registry=r
        )
        self.tokens = Histogram(
            "headscope_tokens_per_request", "tokens in a request's text", buckets=TOKEN_BUCKETS, registry=r
        )
        self.rejections = Counter("headscope_rejections", "requests refused", ["reason"], registry=r)
        self.ooms = Counter("headscope_out_of_memory", "forwards that ran out of memory", registry=r)

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware counting requests by route template and status, and timing them."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static") else "unmatched")
            self.telemetry.requests.labels(name, scope["method"], str(status)).inc()
            self.telemetry.latency.labels(name).observe(time.perf_counter() - start)
