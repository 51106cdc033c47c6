"""Prometheus metrics, JSON logs, and the ASGI middleware around every request: access logging,
metrics, request-body limits and bearer-key checks.

Logs carry the key *id* (never the key) and, with ``redact_inputs``, no prompts or labels. Each
middleware is plain ASGI so it sees the body as it streams and can answer before the app runs.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import KeyStore, RateLimiter, retry_after_header

log = logging.getLogger("genforge.serve")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()  # one per app, so tests can build many apps
        self.requests = Counter("genforge_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("genforge_http_request_seconds", "Time to answer a request", ["route"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60),
                                 registry=r)
        self.batch_images = Histogram("genforge_batch_images", "Images (or inputs) per forward pass",
                                      ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_requests = Histogram("genforge_batch_requests", "Requests merged into one forward pass",
                                        ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r)
        self.inference = Histogram("genforge_inference_seconds", "Time of one merged forward pass",
                                   ["model"], registry=r)
        self.queue_depth = Gauge("genforge_queue_depth", "Requests waiting per model", ["model"], registry=r)
        self.rejected = Counter("genforge_queue_rejected", "Requests refused because the queue was full",
                                ["model"], registry=r)
        self.jobs = Counter("genforge_jobs_finished", "Background jobs finished", ["status"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("genforge", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False


def event(msg: str, level: int = logging.INFO, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": fields})


def error_body(message: str, code: str, kind: str = "invalid_request_error",
               param: Optional[str] = None) -> dict:
    """OpenAI-style error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def send_json(send: Send, status: int, body: dict, headers: Optional[dict] = None) -> None:
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": data})


def request_state(scope: Scope) -> dict:
    return scope.setdefault("state", {})


class ObserveMiddleware:
    """Outermost layer: one JSON log line and the request metrics for every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            state = request_state(scope)
            key = state.get("key")
            event("request", method=scope["method"], route=route, status=status[0],
                  ms=round(elapsed * 1000, 1), key_id=key.id if key is not None else None,
                  **state.get("log", {}))


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error_body(f"request body is larger than {self.limit} bytes", "body_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await send_json(send, 413, too_big)
        seen, over, started = [0], [False], [False]

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.limit:
                    over[0] = True
                    # end the body here; the app's answer is replaced by the 413 below
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            if over[0]:
                if message["type"] == "http.response.start" and not started[0]:
                    started[0] = True
                    await send_json(send, 413, too_big)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


class AuthMiddleware:
    """Bearer keys on /v1/* (and /metrics unless it is open): 401 before the body is read,
    429 past the key's rate. Scopes (403) are checked by each route's dependency."""

    def __init__(self, app: ASGIApp, store: KeyStore, limiter: RateLimiter, metrics_open: bool = False,
                 auth_fail_rate: float = 1.0):
        self.app, self.store, self.limiter, self.metrics_open = app, store, limiter, metrics_open
        self.failed_checks = RateLimiter(rate=auth_fail_rate, burst=5)

    def protected(self, path: str) -> bool:
        return path.startswith("/v1/") or path == "/v1" or (path == "/metrics" and not self.metrics_open)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protected(scope["path"]):
            return await self.app(scope, receive, send)
        challenge = {"www-authenticate": 'Bearer realm="genforge"'}
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return await send_json(send, 401, error_body(
                "missing API key: send 'Authorization: Bearer <key>' (create one with "
                "`genforge keys create`)", "missing_api_key", "authentication_error"), challenge)
        rec, cached = self.store.lookup(token)
        if rec is not None and not cached:
            # scrypt costs tens of ms: bound how often wrong secrets for one key id make us run it
            wait = self.failed_checks.peek(rec.id)
            if wait > 0:
                return await send_json(send, 429, error_body(
                    f"too many failed attempts for key {rec.id}; retry in {wait:.1f} s", "rate_limited",
                    "rate_limit_error"), {"retry-after": retry_after_header(wait)})
            kid = rec.id
            rec = await run_in_threadpool(self.store.verify, token)  # off the event loop
            if rec is None:
                self.failed_checks.take(kid)
        if rec is None:
            return await send_json(send, 401, error_body("invalid API key", "invalid_api_key",
                                                         "authentication_error"), challenge)
        if rec.revoked is not None:
            return await send_json(send, 401, error_body(f"API key {rec.id} has been revoked",
                                                         "revoked_api_key", "authentication_error"),
                                   challenge)
        request_state(scope)["key"] = rec
        wait = self.limiter.take(rec.id, rec.rate_limit)
        if wait > 0:
            return await send_json(send, 429, error_body(
                f"rate limit of key {rec.id} exceeded; retry in {wait:.2f} s", "rate_limited",
                "rate_limit_error"), {"retry-after": retry_after_header(wait)})
        await self.app(scope, receive, send)
