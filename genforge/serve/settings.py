"""Server settings: one pydantic model filled by ``genforge serve`` options (or by tests directly)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


def default_keys_path() -> Path:
    return Path(os.environ.get("GENFORGE_KEYS") or Path.home() / ".genforge" / "keys.json")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # an infinite rate or timeout is a typo

    models: list[str] = Field(default_factory=list)  # run dirs or shipped names; empty: every shipped model
    default_model: Optional[str] = None  # answers requests that name no model (else the first diffusion model)
    device: str = "auto"
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 keeps torch's default
    max_batch_size: int = Field(16, ge=1, le=1024)  # images per merged forward pass; 1 turns batching off
    max_wait_ms: float = Field(10.0, ge=0, le=10_000)  # how long the first request waits for company
    wait_fraction: float = Field(0.25, ge=0, le=100)  # ...and at most this fraction of a recent forward pass
    queue_size: int = Field(64, ge=1)  # requests waiting per model before 503
    jobs_url: Optional[str] = None  # SQLAlchemy URL; None: sqlite in ~/.genforge/jobs.db
    job_max_attempts: int = Field(2, ge=1)  # runs of one job across server restarts before it fails
    keys_path: Path = Field(default_factory=default_keys_path)
    rate_limit: float = Field(20.0, ge=0)  # requests per second per key; 0 disables the limit
    rate_burst: int = Field(40, ge=1)
    auth_fail_rate: float = Field(1.0, gt=0)  # wrong-key checks per second per client address (burst 5)
    auth_fail_global_rate: float = Field(10.0, gt=0)  # ...and from all addresses (burst: 2 s of it, at least 5)
    redact_inputs: bool = False  # keep prompts and labels out of the logs
    metrics_open: bool = False  # /metrics without the admin scope
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # larger uploads are refused (decompression bombs)
    max_job_images: int = Field(1024, ge=1)
    # uploads decoded at once (others wait); 0: one per CPU core but one, at most 4, which keeps a core
    # for the event loop and at most 4 full-size decode buffers (up to 64 MB each) in memory
    max_decodes: int = Field(0, ge=0)
    # images x steps one interactive request may cost (GANs count one step); larger ones go to /v1/jobs
    max_request_cost: int = Field(1600, ge=1)
    # connections (see connections.py): the request head must arrive within header_timeout seconds of
    # connecting or of the previous response, its body within body_timeout; idle keep-alive ones close
    header_timeout: float = Field(10.0, gt=0, le=3600)
    body_timeout: float = Field(60.0, gt=0, le=3600)
    keep_alive_timeout: int = Field(5, ge=1, le=3600)
    max_connections: int = Field(1000, ge=8)  # also kept below the open-file limit
    compile: bool = False  # image models through torch.compile, warmed up before /readyz says ready
    encode_threads: int = Field(2, ge=1, le=64)  # PNG/WebP/JPEG encoding, apart from the model's threads

    def decode_threads(self) -> int:
        return self.max_decodes or min(4, max(1, (os.cpu_count() or 1) - 1))

    def resolved_jobs_url(self) -> str:
        if self.jobs_url:
            return self.jobs_url
        path = Path.home() / ".genforge" / "jobs.db"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return f"sqlite:///{path}"
