"""Service settings, read from the environment (prefix POCKETBERT_) by pydantic-settings.

Every field has a default that serves the bundle(s) in ./bundles with no configuration at all; the
README's settings table mirrors this class. Lists (bundle folders, CORS origins) are comma-separated in
the environment, e.g. POCKETBERT_BUNDLES=bundles/en,bundles/ko.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.plans import available_cores, plan_setting

ENV_PREFIX = "POCKETBERT_"


def _split_commas(value: object) -> object:
    """'a, b' -> ['a', 'b']; lists (from Python callers) pass through unchanged."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """What the web service serves and how it batches; one instance per app."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    bundles: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("bundles")],
        description="Bundle folders: each is a bundle (has bundle.json) or a folder of bundles, one per "
        "subfolder.",
    )
    default_model: str | None = Field(
        None,
        description="Model used when a request names none; default: routing by language (text with "
        "Hangul to the Korean model, other text to the English one), else the first bundle by name.",
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most sequences run in one inference batch.")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=10_000,
        description="Longest the oldest queued request waits for a batch to fill before the batch runs "
        "anyway.",
    )
    max_queue: int = Field(
        1024, ge=1, description="Most sequences waiting per (model, task) queue; beyond it requests get 503."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Deadline of a request from its arrival; past it the answer is 504."
    )
    max_inputs: int = Field(64, ge=1, description="Most texts (or pairs) in one request.")
    max_text_chars: int = Field(4000, ge=1, description="Most characters in one text.")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="Largest request body in bytes; beyond it the answer is 413."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="Longest a client may take to send its body; beyond it the answer is 408."
    )
    max_top_k: int = Field(50, ge=1, le=1000, description="Largest top_k of fill-mask and classify.")
    max_masks_per_text: int = Field(8, ge=1, description="Most [MASK] tokens in one fill-mask text.")
    max_masks_per_request: int = Field(64, ge=1, description="Most [MASK] tokens in one fill-mask request.")
    max_predictions: int = Field(
        1024,
        ge=1,
        description="Most fill-mask predictions per request ([MASK] tokens x top_k): bounds an answer's "
        "size.",
    )
    max_concurrent_requests: int = Field(
        256,
        ge=1,
        description="Task requests (POST) handled at once, from the first byte of the body to the last of "
        "the answer; beyond it the answer is 503 + Retry-After. Health, readiness and metrics are exempt.",
    )
    attention_max_chars: int = Field(
        1000, ge=1, description="Most characters of an /attention text (its answer grows with length^2)."
    )
    attention_max_queue: int = Field(
        4,
        ge=1,
        description="Most /attention requests waiting per model (its unfused graph is the slowest): "
        "beyond it 503 + Retry-After, so attention maps cannot crowd out the other tasks.",
    )
    log_request_texts: bool = Field(
        False, description="Write request texts into the log when a request fails (off: they never are)."
    )
    ort_threads: int | None = Field(
        None,
        ge=1,
        description="onnxruntime intra-op threads per model and worker; default: the worker's share of "
        "the CPU cores (cores / workers, at least 1; cores as the CPU affinity and a cgroup quota allow). "
        "They never spin between operators, so the event loop gets the CPU whenever it has work.",
    )
    engine_plan: str = Field(
        "auto",
        description="How the engine runs each graph per batch-size band: auto (timed once per CPU, graph and "
        "thread count, cached in POCKETBERT_CACHE_DIR or $XDG_CACHE_HOME/pocketbert), fixed (all threads, "
        "one batch), or one plan for every band, e.g. threads=1,chunks=2.",
    )
    inference_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads that run batches; 1 runs one batch at a time, which suits a CPU-bound engine.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS, comma-separated; empty: CORS off."
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level of the service (and of uvicorn when started by `pocketbert serve`)."
    )
    host: str = Field("127.0.0.1", description="Address `pocketbert serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `pocketbert serve` binds.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes started by `pocketbert serve`.")

    @property
    def inference_threads(self) -> int:
        """ort_threads, or the default: this worker's share of the usable cores. All of them: the engine
        bounds throughput (profiled with py-spy: most of a request's CPU time is onnxruntime), and its
        threads sleep instead of spinning, so the event loop still gets a core whenever it needs one."""
        if self.ort_threads:
            return self.ort_threads
        return max(1, available_cores() // self.workers)

    @field_validator("engine_plan")
    @classmethod
    def _readable_plan(cls, value: str) -> str:
        return plan_setting(value)

    @field_validator("bundles", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
