"""API keys: a JSON store of salted scrypt hashes, bearer-token checking and per-key rate limits.

A key reads ``gf_<id>_<secret>``. The id is stored in clear so lookup is one dict access; only the
secret's scrypt hash (per-key salt) is stored, and the key itself is printed once at creation. A
verified key is remembered in memory as a SHA-256 digest, so scrypt runs once per key per process,
not once per request. The file is re-read when it changes, so ``genforge keys revoke`` takes effect
on a running server within a request.

A server's store is ``tolerant``: a keys file that stops parsing (a copy caught half-way) leaves the
last good key set in force, is logged once per version of the file and shows in ``error``; the
``genforge keys`` commands stay strict, so they never write over a file they could not read.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..errors import GenforgeError

SCOPES = ("generate", "classify", "text", "admin")  # text: language models (completions, chat, translations)
_SCRYPT = dict(n=2**14, r=8, p=1, dklen=32)  # ~16 MiB and tens of ms per hash
PREFIX = "gf"
log = logging.getLogger("genforge.serve")
# a token naming no key is checked against these, so it costs the same scrypt as one that does
_DUMMY_SALT, _DUMMY_HASH = secrets.token_bytes(16), secrets.token_hex(32)


def _scrypt(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, maxmem=64 * 2**20, **_SCRYPT)


def split_key(token: str) -> Optional[tuple[str, str]]:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1].isalnum() or not parts[2]:
        return None
    return parts[1], parts[2]


@dataclass
class KeyRecord:
    id: str
    name: str
    scopes: list[str]
    salt: str
    hash: str
    created: float
    revoked: Optional[float] = None
    rate_limit: Optional[float] = None  # requests per second; None uses the server's setting

    def allows(self, scope: str) -> bool:
        """``scope`` is granted; "any" asks only for a valid key. admin implies every scope."""
        return scope == "any" or scope in self.scopes or "admin" in self.scopes

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "scopes": self.scopes, "rate_limit": self.rate_limit,
                "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created)),
                "revoked": self.revoked is not None}


def parse_scopes(text: str | list[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else text
    scopes = sorted({s.strip() for s in items if s.strip()})
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        what = f"unknown scope {bad[0]!r}" if bad else "give at least one scope"
        raise GenforgeError(f"{what}; scopes: {', '.join(SCOPES)} (admin implies the others)")
    return scopes


class KeyStore:
    def __init__(self, path: str | Path, tolerant: bool = False):
        self.path = Path(path).expanduser()
        self.tolerant = tolerant
        self.error: Optional[str] = None  # why the file on disk is not the key set in force
        self.loaded = False  # a key set was read (no file counts: it holds no keys)
        self._keys: dict[str, KeyRecord] = {}
        self._stamp: Optional[tuple] = None
        self._bad_stamp: Optional[tuple] = None
        self._verified: dict[str, bytes] = {}  # key id -> sha256 of the full key, once scrypt agreed
        self._lock = threading.Lock()
        self.reload()

    # -- file I/O -------------------------------------------------------------------------------
    def _stat(self) -> Optional[tuple]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self, strict: Optional[bool] = None) -> None:
        """Read the file if it changed. A bad file raises GenforgeError when ``strict`` (default: not
        ``tolerant``); otherwise the key set in force stays and ``error`` says why."""
        stamp = self._stat()
        if stamp is not None and stamp in (self._stamp, self._bad_stamp):
            return
        keys: dict[str, KeyRecord] = {}
        if stamp is not None:
            try:
                raw = json.loads(self.path.read_text())
                keys = {k["id"]: KeyRecord(**k) for k in raw.get("keys", [])}
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                message = (f"{self.path} is not a readable genforge keys file ({e}); "
                           "fix or remove it and create keys again")
                if (not self.tolerant) if strict is None else strict:
                    raise GenforgeError(message) from None
                self._bad_stamp, self.error = stamp, message
                log.error(message + ("; the keys read before stay in force" if self.loaded else
                                     "; no key is accepted until it is fixed"),
                          extra={"fields": {"keys": str(self.path)}})
                return
        with self._lock:
            if self.error is not None:
                log.warning("keys file readable again", extra={"fields": {"keys": str(self.path)}})
            self._keys, self._stamp, self._bad_stamp = keys, stamp, None
            self.error, self.loaded = None, True
            self._verified = {k: v for k, v in self._verified.items()
                              if k in keys and keys[k].revoked is None}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write between concurrent ``genforge keys`` commands."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._stamp = self._bad_stamp = None
                self.reload(strict=True)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self) -> None:
        data = json.dumps({"version": 1, "keys": [asdict(k) for k in self._keys.values()]}, indent=2)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.replace(tmp, self.path)
        self._stamp = self._stat()

    # -- commands ---------------------------------------------------------------------------------
    def create(self, name: str, scopes: str | list[str], rate_limit: Optional[float] = None
               ) -> tuple[KeyRecord, str]:
        scopes = parse_scopes(scopes)
        if rate_limit is not None and rate_limit < 0:
            raise GenforgeError("--rate-limit must be >= 0 (0 means unlimited)")
        with self._locked():
            kid = secrets.token_hex(6)
            while kid in self._keys:
                kid = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            salt = secrets.token_bytes(16)
            rec = KeyRecord(id=kid, name=name, scopes=scopes, salt=salt.hex(),
                            hash=_scrypt(secret, salt).hex(), created=time.time(), rate_limit=rate_limit)
            self._keys[kid] = rec
            self._write()
        return rec, f"{PREFIX}_{kid}_{secret}"

    def list(self) -> list[KeyRecord]:
        self.reload()
        return sorted(self._keys.values(), key=lambda k: k.created)

    def revoke(self, kid: str) -> KeyRecord:
        with self._locked():
            rec = self._keys.get(kid)
            if rec is None:
                known = ", ".join(self._keys) or "none"
                raise GenforgeError(f"no key with id {kid!r} in {self.path}; ids: {known}")
            if rec.revoked is None:
                rec.revoked = time.time()
                self._write()
        return rec

    # -- request path -----------------------------------------------------------------------------
    def lookup(self, token: str) -> tuple[Optional[KeyRecord], bool]:
        """(record, verified): verified is True when the cache already vouches for the token;
        (None, False) for a token that names no key."""
        self.reload()
        parts = split_key(token)
        rec = self._keys.get(parts[0]) if parts else None
        if rec is None:
            return None, False
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(rec.id)
        return rec, cached is not None and hmac.compare_digest(cached, digest)

    def verify(self, token: str) -> Optional[KeyRecord]:
        """The key's record when ``token`` is a valid key (revoked ones included: check ``revoked``).
        Any well-formed token not vouched for by the cache costs one scrypt run, whether its id
        exists or not, so the time taken does not tell an id that exists from one that does not."""
        rec, ok = self.lookup(token)
        parts = split_key(token)
        if ok or parts is None:
            return rec if ok else None
        salt, want = (bytes.fromhex(rec.salt), rec.hash) if rec is not None else (_DUMMY_SALT, _DUMMY_HASH)
        if not hmac.compare_digest(_scrypt(parts[1], salt).hex(), want) or rec is None:
            return None
        with self._lock:
            self._verified[rec.id] = hashlib.sha256(token.encode()).digest()
        return rec


@dataclass
class RateLimiter:
    """Token bucket per key: ``rate`` tokens a second up to ``burst``; ``take`` returns the seconds
    to wait (0 when the request may go)."""
    rate: float = 20.0
    burst: int = 40
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    max_keys: int = 4096  # past this many buckets, full ones (the same as none) are dropped

    def take(self, key: str, rate: Optional[float] = None, consume: bool = True) -> float:
        rate = self.rate if rate is None else rate
        if rate <= 0 or (not consume and key not in self._buckets):
            return 0.0  # a peek at an unseen key stores nothing: callers may peek for every client address
        burst = max(self.burst, 1)
        now = self.clock()
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets = {k: (t, at) for k, (t, at) in self._buckets.items()
                             if t + (now - at) * rate < burst}
        tokens, last = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0 if consume else tokens, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    def peek(self, key: str, rate: Optional[float] = None) -> float:
        """The wait ``take`` would return, without using a token."""
        return self.take(key, rate, consume=False)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
