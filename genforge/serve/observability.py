"""Prometheus metrics, JSON logs, and the ASGI middleware around every request: access logging,
metrics, request-body limits and bearer-key checks.

Logs carry the key *id* (never the key) and, with ``redact_inputs``, no prompts, labels or exception
text from any logger (see RedactFilter). Each middleware is plain ASGI so it sees the body as it
streams and can answer before the app runs.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import KeyRecord, KeyStore, RateLimiter, retry_after_header, split_key

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
        self.encode = Histogram("genforge_encode_seconds", "Time to encode one request's images (after "
                                "the forward pass, on the encoding threads)", ["model"], registry=r)
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
        elif record.exc_text:  # set (already redacted) by RedactFilter
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


REDACTED = "[redacted]"


def redacted_traceback(exc: BaseException) -> str:
    """A traceback with every exception message left out: the frames (our source lines) stay, the
    messages go, because they quote whatever input the code was handling (a prompt, a label)."""
    chain: list[BaseException] = []
    e: Optional[BaseException] = exc
    while e is not None and all(e is not seen for seen in chain):
        chain.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    parts = []
    for i, e in enumerate(reversed(chain)):
        if i:
            parts.append("\nthe exception above led to this one:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts += traceback.format_tb(e.__traceback__)
        parts.append(f"{_type_name(e)}: {REDACTED}\n")
        for sub in getattr(e, "exceptions", None) or []:  # an exception group: name its members
            parts.append(f"  contains {_type_name(sub)}: {REDACTED}\n")
    return "".join(parts).rstrip("\n")


def _type_name(e: BaseException) -> str:
    t = type(e)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _scrub(value: Any) -> Any:
    return f"<{_type_name(value)}: {REDACTED}>" if isinstance(value, BaseException) else value


class RedactFilter(logging.Filter):
    """Installed on the server's log handler under --redact-inputs, so it sees every logger's records
    (ours, uvicorn's, the root's): exception messages and tracebacks lose their text, exceptions
    passed as message arguments become their type, and access-log paths lose their query string.
    Our own request fields are redacted where they are written (see serve.app's ``_note``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redacted_traceback(record.exc_info[1])
            record.exc_info = None
        elif record.exc_text:  # formatted by some other handler before this one
            record.exc_text = REDACTED
        record.msg = _scrub(record.msg)
        if isinstance(record.args, tuple):
            args = tuple(_scrub(a) for a in record.args)
            path = args[2] if record.name == "uvicorn.access" and len(args) == 5 else None
            if isinstance(path, str) and "?" in path:
                args = (*args[:2], path.split("?", 1)[0] + "?" + REDACTED, *args[3:])
            record.args = args
        elif isinstance(record.args, dict):
            record.args = {k: _scrub(v) for k, v in record.args.items()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and "error" in fields:  # exception text put in a field
            record.fields = {**fields, "error": REDACTED}
        return True


def configure_logging(level: str = "INFO", redact: bool = False) -> None:
    """One JSON handler on the root logger, so every logger's records go through it (and, with
    ``redact``, through RedactFilter); genforge's and uvicorn's loggers log at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.genforge = True  # type: ignore[attr-defined]  # lets tests find it
    if redact:
        handler.addFilter(RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "genforge", False)] + [handler]
    numeric = logging.getLevelName(level)  # other libraries: warnings and up
    root.setLevel(max(logging.WARNING, numeric) if isinstance(numeric, int) else logging.WARNING)
    for name in ("genforge", "uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.setLevel(level)
        lg.propagate = True


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


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ObserveMiddleware:
    """Outermost layer: one JSON log line and the request metrics for every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, started = time.perf_counter(), [500], [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if started[0]:
                raise  # too late for a 500: the server logs it once and drops the connection
            # Answered here rather than by Starlette's error middleware, which logs through the app's
            # handler and then re-raises so uvicorn logs the same traceback a second time.
            log.exception("unhandled error")  # the request line below names the route
            status[0] = 500
            await send_json(send, 500, error_body("internal server error; see the server log",
                                                  "internal_error", "server_error"))
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            # label values come from a fixed set, so clients cannot mint new series with made-up methods
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(method, route, str(status[0])).inc()
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
    429 past the key's rate. Scopes (403) are checked by each route's dependency.

    A token this process has not verified yet costs one scrypt run (tens of ms, 16 MiB), the same
    for an id that exists and one that does not. Wrong tokens are limited per client address and
    across all addresses, never per key id: knowing a key's id (ids are in logs) must not let
    anyone lock that key out. Keys verified before need no scrypt, so they are admitted even while
    the server-wide bound refuses new checks."""

    FAIL_BURST = 5

    def __init__(self, app: ASGIApp, store: KeyStore, limiter: RateLimiter, metrics_open: bool = False,
                 auth_fail_rate: float = 1.0, auth_fail_global_rate: float = 10.0, checks_at_once: int = 2):
        self.app, self.store, self.limiter, self.metrics_open = app, store, limiter, metrics_open
        self.failed_by_client = RateLimiter(rate=auth_fail_rate, burst=self.FAIL_BURST)
        self.failed_total = RateLimiter(rate=auth_fail_global_rate,
                                        burst=max(self.FAIL_BURST, round(2 * auth_fail_global_rate)))
        self.checks_at_once = checks_at_once
        self._checks: Optional[tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = None

    def protected(self, path: str) -> bool:
        return path.startswith("/v1/") or path == "/v1" or (path == "/metrics" and not self.metrics_open)

    async def _check(self, client: str, token: str) -> tuple[Optional[KeyRecord], Optional[dict], float]:
        """(record, None, 0) or (None, None, 0) for a wrong token, or (None, error body, wait) when
        a failed-check bound refuses to run scrypt for it."""
        loop = asyncio.get_running_loop()
        if self._checks is None or self._checks[0] is not loop:  # one per loop (tests run several)
            self._checks = (loop, asyncio.Semaphore(self.checks_at_once))
        # bounds scrypt's CPU and memory, and makes each check see the failures of the ones before
        async with self._checks[1]:
            for bucket, who, where in ((self.failed_by_client, client, "from your address"),
                                       (self.failed_total, "", "on this server")):
                wait = bucket.peek(who)
                if wait > 0:
                    return None, error_body(f"too many failed API key checks {where}; retry in {wait:.1f} s",
                                            "rate_limited", "rate_limit_error"), wait
            rec = await run_in_threadpool(self.store.verify, token)  # off the event loop
            if rec is None:
                self.failed_by_client.take(client)
                self.failed_total.take("")
            return rec, None, 0.0

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
        if not cached:
            if not self.store.loaded:  # started with an unreadable keys file and none read since
                return await send_json(send, 503, error_body(
                    "this server cannot check API keys: its keys file is unreadable; the operator must fix "
                    "it (see the server log and /readyz)", "keys_unavailable", "server_error"),
                    {"retry-after": "30"})
            rec = None
            if split_key(token) is not None:  # a malformed token costs nothing and tells nothing
                client = (scope.get("client") or ("unknown",))[0]
                rec, refusal, wait = await self._check(client, token)
                if refusal is not None:
                    return await send_json(send, 429, refusal, {"retry-after": retry_after_header(wait)})
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
