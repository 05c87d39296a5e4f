"""The Celery application, configured from settings.

With ``REDIS_URL`` the broker is Redis; without it, Kombu's file-system
transport under ``$DACIAVISION_HOME/broker`` lets the API and a local worker
talk with no server at all (embedded mode). Celery keeps no results: the job
store is the source of truth for every job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, signals

from trainer.kernels import use_training_kernels
from worker.settings import Settings, get_settings

TRAIN_TASK = "daciavision.train"
TRAINING_QUEUE = "training"


def broker_options(settings: Settings) -> tuple[str, dict[str, object]]:
    """Broker URL and transport options for the configured mode."""
    if settings.redis_url:
        # A training can run for hours; an unacknowledged message must not be
        # handed to a second worker meanwhile. Lost workers are detected by the
        # job store's leases instead, which is far quicker.
        timeout = settings.redis_socket_timeout_seconds
        return settings.redis_url, {
            "visibility_timeout": 7 * 24 * 3600,
            # Explicit socket timeouts: a half-open connection must fail, not hang.
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
    queue_dir, control_dir = _broker_directories(settings)
    return "filesystem://", {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "control_folder": str(control_dir),
        "store_processed": False,
    }


def _broker_directories(settings: Settings) -> tuple[Path, Path]:
    return settings.broker_dir / "queue", settings.broker_dir / "control"


def prepare_broker(celery_app: Celery) -> None:
    """Create the embedded broker's folders; called before sending or consuming, never at import."""
    options = celery_app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        if key in options:
            Path(options[key]).mkdir(parents=True, exist_ok=True)


def create_celery_app(settings: Settings) -> Celery:
    broker_url, transport_options = broker_options(settings)
    app = Celery("daciavision", broker=broker_url, include=["worker.tasks", "worker.study_tasks"])
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_default_queue=TRAINING_QUEUE,
        task_ignore_result=True,
        result_backend=None,
        # Acknowledge after the job ends, and give the message back if the
        # child dies mid-training: together with idempotent tasks keyed by
        # job_id, a killed worker never loses a job.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One child per job: the memory a training takes is returned when it
        # exits. TensorFlow is imported before the fork but never run there.
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue_training(celery_app: Celery, job_id: str) -> None:
    """Send job ``job_id`` to the training queue; raises if the broker is unreachable."""
    prepare_broker(celery_app)
    celery_app.send_task(
        TRAIN_TASK,
        args=[job_id],
        task_id=job_id,
        queue=TRAINING_QUEUE,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
    )


app = create_celery_app(get_settings())


@signals.worker_init.connect
def _prepare_broker(**_: Any) -> None:
    prepare_broker(app)


@signals.worker_init.connect
def _import_training_libraries(**_: Any) -> None:
    # Every job runs in a freshly forked child (worker_max_tasks_per_child=1), and
    # importing TensorFlow, Keras and scikit-learn took each child about 10 s of its
    # job on an AVX2-only EPYC. Imported once here, before the pool forks, every
    # child inherits them. Importing runs no TensorFlow op, so this process holds no
    # device context or thread pool for the fork to break; the kernels' variable
    # must be set first because TensorFlow reads it when it loads.
    use_training_kernels()
    import trainer.run  # noqa: F401 - TensorFlow and Keras
    from trainer.evaluate import import_metrics_library

    import_metrics_library()
