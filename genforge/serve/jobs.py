"""Background jobs: a SQLAlchemy table (SQLite with WAL by default, any SQLAlchemy URL works; see
jobs_db.py) and one runner task per server that claims queued jobs one at a time.

Nothing is lost to a crash. A running job carries its worker (host:pid) and a heartbeat; at startup
and then every few seconds, running jobs whose worker is a dead process on this host, or whose
heartbeat is stale (another host), are re-queued, and after ``max_attempts`` runs they fail with
the reason. Claiming is a conditional UPDATE, so several servers can share one database.

With ``GENFORGE_JOBS_KEY`` (a Fernet key) a job's params and results are encrypted at rest. Each
field records the key that sealed it (``params_key``, ``result_key``: a one-way name of the key;
NULL for clear text), because the server that runs a job may hold another key, or none, than the
one that queued it. A server claims only jobs whose params it can open and leaves the others queued
for a server with their key; reading a field it cannot open is a message, never an error.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from typing import Any, Awaitable, Callable, Optional

from sqlalchemy import and_, func, not_, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import GenforgeError
from .jobs_db import _driver_url, check_url, create_tables, jobs, make_engine, metadata  # noqa: F401

log = logging.getLogger("genforge.serve")
STATUSES = ("queued", "running", "succeeded", "failed")

_FERNET_PREFIX = b"gAAAAA"  # every Fernet token (version byte 0x80, then a timestamp); no JSON starts so


def _sealer(key: Any) -> tuple[Any, str]:
    """A Fernet for ``key`` (the key itself, bytes or str) and the name fields record for it: a hash, so
    it tells nothing of the key. Fernet offers no public way to read a key back from a Fernet object
    (cryptography 51 dropped the private halves older versions had), so the store takes the key."""
    from cryptography.fernet import Fernet

    if isinstance(key, (bytes, str)):
        raw = key.encode() if isinstance(key, str) else key
        fernet = Fernet(raw)
        material = base64.urlsafe_b64decode(raw)
    elif hasattr(key, "_signing_key"):  # a Fernet object of cryptography < 51
        fernet, material = key, key._signing_key + key._encryption_key
    else:
        raise TypeError("JobStore needs the Fernet key itself (bytes or str), not a Fernet object")
    return fernet, hashlib.sha256(b"genforge-jobs-key:" + material).hexdigest()[:32]


def fernet_from_env():
    """The jobs key from GENFORGE_JOBS_KEY (checked), or None when it is not set."""
    key = os.environ.get("GENFORGE_JOBS_KEY")
    if not key:
        return None
    from cryptography.fernet import Fernet

    try:
        Fernet(key.encode())
    except ValueError:
        raise GenforgeError("GENFORGE_JOBS_KEY is not a Fernet key (32 url-safe base64-encoded bytes); make "
                            "one with: python -c 'from cryptography.fernet import Fernet; "
                            "print(Fernet.generate_key().decode())'") from None
    return key.encode()


def _pid_alive(worker: Optional[str]) -> bool:
    """False only when ``worker`` (host:pid:tag) names a process of this host that has exited."""
    host, pid, _ = ((worker or "").split(":") + ["", "", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host: only its heartbeat can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class JobStore:
    def __init__(self, url: str, fernet: Any = None):
        check_url(url)
        self.url = url
        self.fernet, self.key_id = _sealer(fernet) if fernet is not None else (None, None)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._unopenable: set[str] = set()  # queued jobs of older servers whose key turned out not ours
        try:
            self.engine = make_engine(url)
            create_tables(self.engine)
        except SQLAlchemyError as e:
            raise GenforgeError(f"cannot open the jobs database {self.safe_url}: {e.__class__.__name__}: "
                                f"{str(e).splitlines()[0]}; check the URL and that the database is reachable "
                                "(for SQLite, that its folder exists and is writable)") from None
        except ImportError as e:  # the URL names a driver this venv lacks
            raise GenforgeError(f"the jobs database {self.safe_url} needs the {e.name!r} module; for "
                                f"PostgreSQL use a postgresql+psycopg:// URL and pip install 'genforge[pg]'"
                                ) from None

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def _seal(self, data: bytes) -> bytes:
        return self.fernet.encrypt(data) if self.fernet is not None else data

    def _open(self, data: Optional[bytes], key_id: Optional[str], what: str) -> Optional[Any]:
        """A stored field, decrypted when sealed. Rows of older servers name no key: a Fernet token
        is told from JSON by its first bytes (which also reads the results they sealed but
        recorded as clear)."""
        if data is None:
            return None
        data = bytes(data)  # some drivers hand back a memoryview
        if key_id is not None or data.startswith(_FERNET_PREFIX):
            if self.fernet is None:
                raise GenforgeError(f"the job's {what} is encrypted with a GENFORGE_JOBS_KEY this server "
                                    "lacks; read it from a server started with that key")
            from cryptography.fernet import InvalidToken

            try:
                data = self.fernet.decrypt(data)
            except InvalidToken:
                raise GenforgeError(f"the job's {what} is encrypted with another GENFORGE_JOBS_KEY than this "
                                    "server's; read it from a server started with that key") from None
        try:
            return json.loads(data)
        except ValueError:
            raise GenforgeError(f"the job's stored {what} is not readable JSON") from None

    def create(self, type: str, model: str, params: dict, owner: str) -> str:
        job_id = "job_" + secrets.token_hex(12)
        with self.engine.begin() as c:
            c.execute(jobs.insert().values(
                id=job_id, type=type, model=model, owner=owner, status="queued", progress=0.0,
                params=self._seal(json.dumps(params).encode()), params_key=self.key_id,
                encrypted=self.fernet is not None, attempts=0, created=time.time()))
        return job_id

    def row(self, job_id: str) -> Any:
        if "\x00" in job_id:  # no job id has one, and PostgreSQL rejects NUL in text instead of matching none
            return None
        with self.engine.connect() as c:
            return c.execute(select(jobs).where(jobs.c.id == job_id)).first()

    def params(self, row: Any) -> dict:
        return self._open(row.params, row.params_key, "params")

    def public(self, row: Any, with_result: bool = True) -> dict:
        out = {"id": row.id, "object": "job", "type": row.type, "model": row.model, "status": row.status,
               "progress": round(row.progress or 0.0, 4), "attempts": row.attempts, "error": row.error,
               "created": row.created, "started": row.started, "finished": row.finished}
        try:
            out["params"] = self.params(row)
        except GenforgeError as e:
            out["params"], out["params_error"] = None, str(e)
        if with_result and row.status == "succeeded":
            try:
                out["result"] = self._open(row.result, row.result_key, "result")
            except GenforgeError as e:
                out["result_error"] = str(e)
        return out

    def list(self, owner: Optional[str], limit: int = 50) -> list[Any]:
        q = select(jobs).order_by(jobs.c.created.desc()).limit(limit)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as c:
            return list(c.execute(q))

    def _openable(self) -> Any:
        """Which jobs' params this store can read, as an SQL condition."""
        if self.fernet is None:
            return and_(jobs.c.params_key.is_(None), not_(jobs.c.encrypted))
        cond = or_(jobs.c.params_key.is_(None), jobs.c.params_key == self.key_id)
        return and_(cond, jobs.c.id.not_in(self._unopenable)) if self._unopenable else cond

    def unopenable_queued(self) -> int:
        """Queued jobs sealed with a key this store lacks: they wait for a server that has it."""
        with self.engine.connect() as c:
            if self._unopenable:
                self._unopenable &= {r.id for r in c.execute(select(jobs.c.id).where(
                    jobs.c.id.in_(self._unopenable), jobs.c.status == "queued"))}
            return c.execute(select(func.count()).select_from(jobs).where(
                jobs.c.status == "queued", not_(self._openable()))).scalar_one()

    def claim_next(self) -> Any:
        """Atomically move the oldest queued job whose params this store can read to running; None
        when there is none."""
        with self.engine.connect() as c:
            found = list(c.execute(select(jobs.c.id, jobs.c.params, jobs.c.params_key).where(
                jobs.c.status == "queued", self._openable()).order_by(jobs.c.created).limit(5)))
        ids = []
        for r in found:
            if r.params_key is None and self.fernet is not None and bytes(r.params[:6]) == _FERNET_PREFIX:
                from cryptography.fernet import InvalidToken

                try:  # sealed by an older server, which named no key: only trying tells
                    self.fernet.decrypt(bytes(r.params))
                except InvalidToken:
                    self._unopenable.add(r.id)
                    continue
            ids.append(r.id)
        for job_id in ids:
            now = time.time()
            with self.engine.begin() as c:
                res = c.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued").values(
                    status="running", started=now, heartbeat=now, worker=self.worker, progress=0.0,
                    attempts=jobs.c.attempts + 1))
            if res.rowcount == 1:
                return self.row(job_id)
        return None

    def touch(self, job_id: str, progress: float) -> None:
        with self.engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running")
                      .values(progress=min(max(progress, 0.0), 1.0), heartbeat=time.time()))

    def succeed(self, job_id: str, result: dict) -> None:
        with self.engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(
                status="succeeded", progress=1.0, result=self._seal(json.dumps(result).encode()),
                result_key=self.key_id, finished=time.time(), error=None))

    def fail(self, job_id: str, reason: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(
                status="failed", error=reason, finished=time.time()))

    def requeue(self, job_id: str, reason: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running").values(
                status="queued", progress=0.0, error=reason, attempts=jobs.c.attempts - 1))

    def recover(self, max_attempts: int, stale_s: float, active: frozenset[str] = frozenset()
                ) -> dict[str, int]:
        """Running jobs whose worker is gone: re-queue them, or fail them after ``max_attempts``.
        Gone: ours but not in ``active``, a dead process of this host, or a stale heartbeat."""
        now, counts = time.time(), {"requeued": 0, "failed": 0}
        with self.engine.connect() as c:
            running = list(c.execute(select(jobs).where(jobs.c.status == "running")))
        for r in running:
            if r.worker == self.worker:
                gone = r.id not in active
            else:
                gone = not _pid_alive(r.worker) or now - (r.heartbeat or 0) > stale_s
            if not gone:
                continue
            where = (jobs.c.id == r.id) & (jobs.c.status == "running") & (jobs.c.worker == r.worker)
            if r.attempts >= max_attempts:
                values = dict(status="failed", finished=now,
                              error=f"the server running this job stopped during each of its {r.attempts} "
                                    f"attempts (last worker {r.worker}); giving up")
                key = "failed"
            else:
                values = dict(status="queued", progress=0.0,
                              error=f"re-queued: the server running it stopped (worker {r.worker}, "
                                    f"attempt {r.attempts} of {max_attempts})")
                key = "requeued"
            with self.engine.begin() as c:
                counts[key] += c.execute(update(jobs).where(where).values(**values)).rowcount
        return counts

    def close(self) -> None:
        self.engine.dispose()


Handler = Callable[[dict, Callable[[float], None]], Awaitable[dict]]


class JobRunner:
    """Runs queued jobs one at a time. ``handlers[type](params, progress) -> result dict``; a
    GenforgeError (or any exception) fails the job with its message."""

    def __init__(self, store: JobStore, handlers: dict[str, Handler], *, max_attempts: int = 2,
                 stale_s: float = 30.0, poll_s: float = 2.0, metrics: Any = None):
        self.store, self.handlers, self.metrics = store, handlers, metrics
        self.max_attempts, self.stale_s, self.poll_s = max_attempts, stale_s, poll_s
        self._active: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: Optional[asyncio.Task] = None
        self.sealed_waiting = 0  # queued jobs sealed with a key this server lacks (for /readyz)

    def notify(self) -> None:
        self._wakeup.set()

    async def start(self) -> dict[str, int]:
        counts = await asyncio.to_thread(self.store.recover, self.max_attempts, self.stale_s)
        if any(counts.values()):
            log.warning("jobs interrupted by a stopped server", extra={"fields": counts})
        await self._count_sealed()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="genforge-jobs")
        return counts

    async def sweep(self) -> None:
        """Re-queue the jobs of stopped servers; count the queued jobs left for another key."""
        await asyncio.to_thread(self.store.recover, self.max_attempts, self.stale_s, frozenset(self._active))
        await self._count_sealed()

    async def _count_sealed(self) -> None:
        before, self.sealed_waiting = self.sealed_waiting, await asyncio.to_thread(self.store.unopenable_queued)
        if self.sealed_waiting and not before:  # said when it starts, not on every sweep
            have = "a different GENFORGE_JOBS_KEY" if self.store.fernet is not None else "no GENFORGE_JOBS_KEY"
            log.warning(f"{self.sealed_waiting} queued job(s) are encrypted with a GENFORGE_JOBS_KEY this "
                        f"server lacks (it has {have}); leaving them queued for a server that has it",
                        extra={"fields": {"jobs": self.sealed_waiting}})
        elif before and not self.sealed_waiting:
            log.info("no queued job waits for another jobs key any more")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        active, self._active = set(self._active), set()
        for job_id in active:  # a clean shutdown is not a failed attempt: queue it for the next start
            with contextlib.suppress(SQLAlchemyError):
                await asyncio.to_thread(self.store.requeue, job_id, "re-queued: the server shut down")

    async def _loop(self) -> None:
        last_sweep = time.monotonic()
        while True:
            try:
                if time.monotonic() - last_sweep > min(10.0, self.stale_s / 3):
                    last_sweep = time.monotonic()
                    await self.sweep()
                row = await asyncio.to_thread(self.store.claim_next)
            except SQLAlchemyError as e:  # database away for a moment: keep serving, try again
                log.error("jobs database error", extra={"fields": {"error": str(e).splitlines()[0]}})
                row = None
            if row is None:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.poll_s)
                continue
            await self._run(row)

    async def _run(self, row: Any) -> None:
        state = {"progress": 0.0}
        self._active.add(row.id)
        beat = asyncio.get_running_loop().create_task(self._heartbeat(row.id, state))
        status, reason = "failed", None
        try:
            handler = self.handlers.get(row.type)
            if handler is None:
                raise GenforgeError(f"unknown job type {row.type!r}; this server runs: "
                                    f"{', '.join(self.handlers)}")
            params = self.store.params(row)
            result = await handler(params, lambda p: state.__setitem__("progress", p))
            await asyncio.to_thread(self.store.succeed, row.id, result)
            status = "succeeded"
        except asyncio.CancelledError:
            beat.cancel()
            raise  # shutting down: stop() puts the job back in the queue
        except GenforgeError as e:
            reason = str(e)
        except Exception as e:
            log.exception("job failed", extra={"fields": {"job": row.id}})
            reason = f"internal error: {type(e).__name__}: {e}"
        beat.cancel()
        self._active.discard(row.id)
        if reason is not None:
            try:
                await asyncio.to_thread(self.store.fail, row.id, reason)
            except SQLAlchemyError as e:  # the stale-job sweep settles it once the database is back
                log.error("jobs database error", extra={"fields": {"job": row.id, "error": str(e).splitlines()[0]}})
        if self.metrics is not None:
            self.metrics.jobs.labels(status).inc()
        log.info("job finished", extra={"fields": {"job": row.id, "status": status, "type": row.type}})

    async def _heartbeat(self, job_id: str, state: dict) -> None:
        while True:
            with contextlib.suppress(SQLAlchemyError):
                await asyncio.to_thread(self.store.touch, job_id, state["progress"])
            await asyncio.sleep(1.0)
