"""The one settings object, read from the environment once.

Shared by the API and the workers (both must agree on where the registry,
the job store and the broker are). Reach it through ``get_settings()``;
tests clear its cache or override the dependency.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    # The short names (DATA_DIR, REDIS_URL) and prefixed ones both work.
    return AliasChoices(name, f"DACIAVISION_{name}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DACIAVISION_", extra="ignore")

    home: Path = Field(
        Path.home() / ".daciavision",
        description="Root for everything the service writes when no other path is set.",
    )
    data_dir: Path | None = Field(
        None,
        validation_alias=_env("DATA_DIR"),
        description="Where {dataset}.npz files live (default: $DACIAVISION_HOME/datasets).",
    )
    registry_dir: Path | None = Field(
        None,
        validation_alias=_env("REGISTRY_DIR"),
        description="Model registry root (default: $DACIAVISION_HOME/registry).",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=_env("REDIS_URL"),
        description="Broker and job store; empty means embedded mode (no server needed).",
    )
    model_cache_size: int = Field(4, ge=1, description="Loaded model versions kept in memory.")
    model_cache_max_bytes: int = Field(
        1024**3,
        ge=1,
        description="Bytes of model weights kept loaded; past it the least recently used "
        "versions are evicted (a single larger version is still served, alone).",
    )
    model_load_failure_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="A version that failed to load (corrupt or unloadable file) answers the "
        "same error this long without loading or hashing it again; 0 retries every time.",
    )
    registry_recheck_seconds: float = Field(
        0.1,
        ge=0,
        le=60,
        description="How long the API trusts a resolved model reference (alias, latest) "
        "before it checks the registry's files again; changes made by other processes show "
        "within this time, those made through the API at once. 0 checks on every request.",
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_instances: int = Field(256, ge=1, description="Images per /predict request.")
    batching: bool = Field(
        True, description="Run concurrent /predict requests of one model as one model call."
    )
    max_batch_size: int = Field(
        64, ge=1, le=1024, description="Most images in one model call (batches and chunks)."
    )
    max_batch_wait_seconds: float = Field(
        0.002,
        ge=0,
        le=10,
        description="Longest a request waits for its batch to fill; only under load, never "
        "on an idle server.",
    )
    batch_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="Model calls of one model that may run at once, each on a thread taking "
        "batches from the model's one queue (TF Serving's num_batch_threads).",
    )
    predict_max_pending: int = Field(
        128, ge=1, description="Prediction requests in progress before new ones get a 503."
    )
    decode_threads: int = Field(2, ge=1, description="Threads decoding images for /predict.")
    api_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="API server processes sharing the port (`daciavision serve`); each loads "
        "the models it serves. One per core lets JSON batches decode beside inference "
        "without waiting for one Python interpreter lock.",
    )
    inference_intra_op_threads: int = Field(
        1,
        ge=0,
        le=1024,
        description="Threads each TensorFlow op of a model call may use in an API process "
        "(TF Serving's tensorflow_intra_op_parallelism); 0 lets TensorFlow use every core. "
        "One is fastest for the small batches of live traffic; the batch threads keep the "
        "other cores busy.",
    )
    inference_jit_compile: bool = Field(
        False, description="Compile the forward pass with XLA (faster for single images here)."
    )
    job_lease_seconds: float = Field(
        60.0, gt=1, description="A running job whose worker is silent this long is requeued."
    )
    job_max_attempts: int = Field(3, ge=1)
    job_stop_grace_seconds: float = Field(
        300.0,
        gt=0,
        description="A training still running this long after a cancel or its time limit "
        "(stuck outside the steps where it checks) is ended with its worker child, and the "
        "job with it.",
    )
    alias_history_limit: int = Field(
        100, ge=2, le=100_000, description="Moves kept in each alias' history (oldest dropped)."
    )
    staging_max_age_seconds: float = Field(
        3600.0,
        ge=0,
        description="A registration's staging folder untouched this long is a crash's "
        "leftover; workers remove such folders when they start.",
    )
    api_url: str = Field("http://127.0.0.1:8000", description="Where the client CLI sends calls.")
    api_key: str | None = Field(
        None, description="The key the client CLI sends (DACIAVISION_API_KEY); never stored."
    )

    # Access: only hashes of keys are configured, never keys (service/security.py).
    api_keys: str = Field(
        "",
        description="Accepted API keys as 'sha256hex:scope,scope' entries separated by ';' "
        "(`daciavision keys new` prints one). Empty: no keys, allowed only on loopback.",
    )
    prometheus_open: bool = Field(
        False, description="Serve /monitoring/prometheus/metrics without a key."
    )
    allowed_origins: str = Field(
        "", description="Comma-separated browser origins allowed by CORS; none by default."
    )
    allowed_hosts: str | None = Field(
        None,
        description="Comma-separated Host names the API answers; unset or empty means "
        "loopback names when no keys are configured and any host once keys protect the API.",
    )

    # Bounded requests (service/limits.py, service/images.py).
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest body of a /predict request."
    )
    max_json_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest body of every other route (jobs, aliases)."
    )
    max_image_pixels: int = Field(
        4_000_000, ge=64, description="Largest image, in pixels, read from its header."
    )
    max_request_pixels: int = Field(
        32_000_000, ge=64, description="Pixels of all images of one request together."
    )
    request_timeout_seconds: float = Field(
        120.0, gt=0, description="A request still running after this answers 504."
    )

    # Bounded jobs (trainer/budget.py, worker/runner.py).
    max_model_parameters: int = Field(
        50_000_000, ge=1, description="Largest model a job may build, in parameters."
    )
    max_activation_bytes: int = Field(
        4 * 1024**3, ge=1, description="Estimated activation memory of one training batch."
    )
    max_training_flops: float = Field(
        5e15, gt=0, description="Estimated floating-point operations of a whole training."
    )
    job_time_limit_seconds: float = Field(
        6 * 3600.0, gt=0, description="Default wall-time limit of a job."
    )
    job_max_time_limit_seconds: float = Field(
        24 * 3600.0, gt=0, description="Largest time_limit_seconds a spec may ask for."
    )
    job_resend_after_seconds: float = Field(
        900.0,
        gt=0,
        description="A job queued this long without a worker taking it is sent to the "
        "broker again (its message may have been lost); duplicates are harmless.",
    )
    redis_socket_timeout_seconds: float = Field(
        5.0, gt=0, description="Timeout of every Redis connect, read and write."
    )

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or self.home / "datasets"

    @property
    def resolved_registry_dir(self) -> Path:
        return self.registry_dir or self.home / "registry"

    @property
    def jobs_db_path(self) -> Path:
        return self.home / "jobs.sqlite3"

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def embedded(self) -> bool:
        return not self.redis_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
