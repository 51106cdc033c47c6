"""Connection limits for `genforge serve`, at the HTTP-protocol layer where uvicorn leaves them out.

uvicorn closes a keep-alive connection that stays idle after a response, but any byte restarts that
timer, and a connection that never sends a request has no timer at all (the request-start timeout
of uvicorn issue #157 was never added); ASGI middleware cannot help, because the app only sees a
request once its head is complete. So a client dripping a byte every few seconds, or just sitting
on a socket, holds a file descriptor for good, and a few hundred of them exhaust the process's
open-file limit.

``GuardedH11Protocol`` (uvicorn's h11 protocol plus deadlines) closes a connection whose request
head has not arrived within ``header_timeout`` seconds of connecting or of its previous response,
or whose body has not arrived within ``body_timeout`` seconds of its head. It also caps open
connections below the open-file limit: past the cap, the connection that has waited longest for a
request head is closed to make room, and if every connection is busy with a request the new one
is answered 503. ``AcceptErrorFilter`` keeps the log to one line per interval if accept() still
fails for lack of file descriptors.
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, Optional

from uvicorn.protocols.http.h11_impl import H11Protocol

PROTOCOL = "genforge.serve.connections:GuardedH11Protocol"  # what uvicorn's ``http=`` is given
FD_RESERVE = 32  # descriptors kept for everything but client sockets: jobs db, keys file, static files
# uvicorn's ``backlog``, which asyncio also uses as the most connections accepted in one pass of the
# loop, before any of them reaches connection_made (where the cap applies). 2048 by default: then a
# flood takes thousands of descriptors at once, and accept() failing with EMFILE is retried (and
# logged) up to that many times per pass. Two passes of it fit between the cap and the file limit.
BACKLOG = 32
# A client sends its request right behind the handshake, so a connection the loop has polled at least
# once and that is this old without a byte is not a prompt client whose head is still on its way.
EVICT_GRACE = 0.05
_BUSY_BODY = json.dumps({"error": {"message": "the server has too many open connections; retry shortly",
                                   "type": "server_overloaded", "param": None, "code": "too_many_connections"}})
_BUSY = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
         f"content-length: {len(_BUSY_BODY)}\r\nretry-after: 1\r\n\r\n{_BUSY_BODY}").encode()


@dataclass
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1000


LIMITS = Limits()  # one server per process: configure() sets it before uvicorn starts


def configure(header_timeout: float, body_timeout: float, max_connections: int) -> Limits:
    """Set this process's limits; raise the open-file soft limit to the hard one and keep the
    connection cap ``FD_RESERVE`` below it, so accept() does not run out of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    cap = max_connections
    if soft != resource.RLIM_INFINITY:  # room for two passes of accepts beyond the cap
        cap = max(8, min(cap, soft - FD_RESERVE - 2 * BACKLOG))
    LIMITS.header_timeout, LIMITS.body_timeout, LIMITS.max_connections = header_timeout, body_timeout, cap
    install_accept_error_filter()
    return LIMITS


class GuardedH11Protocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._head_cycle: Any = None  # the request cycle whose head we last saw
        self.waiting_since: Optional[float] = None  # set while waiting for a request head
        self.read_once = False  # data_received has run: a prompt client has sent its head by then
        self.polled = False  # the loop has checked the socket for data at least once
        self.served = 0  # responses sent: a client's idle keep-alive connection is evicted last

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # asyncio registers the socket's reader right after this call; two passes of the loop later,
        # data that was already there has been read
        self.loop.call_soon(self.loop.call_soon, self._mark_polled)
        if len(self.connections) > LIMITS.max_connections and not self._evict_one():
            self.connections.discard(self)
            transport.write(_BUSY)
            transport.close()
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        self.read_once = True
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        self.served += 1
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.cycle is self._head_cycle:  # nothing pipelined: the next request starts from nothing
            self._await_head()
        else:
            self._track()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        self.waiting_since = None
        super().connection_lost(exc)

    def _mark_polled(self) -> None:
        self.polled = True

    # -- deadlines ------------------------------------------------------------------------------------
    def _await_head(self) -> None:
        self.waiting_since = time.monotonic()
        self._arm(LIMITS.header_timeout)

    def _track(self) -> None:
        """After bytes were parsed: move from head to body to done as the request arrives."""
        cycle = self.cycle
        if cycle is None or self.transport.is_closing():
            return
        if cycle is not self._head_cycle:  # a new request head is complete
            self._head_cycle, self.waiting_since = cycle, None
            if cycle.more_body:
                self._arm(LIMITS.body_timeout)
            else:
                self._disarm()
        elif self.waiting_since is None and not cycle.more_body:
            self._disarm()  # the body is complete; the response may take as long as it needs

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.waiting_since = None
        self.transport.close()  # the app, if a request is running, then sees http.disconnect

    def _evict_one(self) -> bool:
        """Close a connection waiting for a request head, one that never finished a request first
        (an idle keep-alive connection of a client that did is closed last), the oldest first; False
        if there is none. A connection the loop has not yet polled for data, or that has been open
        under ``EVICT_GRACE`` seconds without sending a byte, is spared: a flood of new connections
        would otherwise evict a prompt client before its head was read."""
        oldest: Optional[GuardedH11Protocol] = None
        young = time.monotonic() - EVICT_GRACE
        for c in self.connections:
            since = getattr(c, "waiting_since", None)
            if c is self or since is None or not c.polled or (since > young and not c.read_once):
                continue
            if oldest is None or (c.served > 0, since) < (oldest.served > 0, oldest.waiting_since):
                oldest = c
        if oldest is None:
            return False
        oldest._expire()
        oldest.connections.discard(oldest)  # counted out now; connection_lost follows on the loop
        return True


class AcceptErrorFilter(logging.Filter):
    """At most one log record per ``interval`` seconds for accept() failing (EMFILE and the like),
    with the count of those left out, and no traceback: the loop retries on its own."""

    PREFIX = "socket.accept() out of system resource"

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.interval, self.last, self.suppressed = interval, float("-inf"), 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIX):
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = (f"{self.PREFIX}: {exc or 'unknown error'}; new connections wait until descriptors "
                      f"free up ({self.suppressed} such errors not logged in the last {self.interval:g} s)")
        record.args, record.exc_info, record.exc_text = (), None, None
        self.last, self.suppressed = now, 0
        return True


def install_accept_error_filter(interval: float = 10.0) -> AcceptErrorFilter:
    """On the asyncio logger, which the event loop's default exception handler writes to."""
    lg = logging.getLogger("asyncio")
    for f in lg.filters:
        if isinstance(f, AcceptErrorFilter):
            return f
    f = AcceptErrorFilter(interval)
    lg.addFilter(f)
    return f
