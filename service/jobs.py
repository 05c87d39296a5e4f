"""Submitting training jobs: check what can be checked now, store, then enqueue."""

from __future__ import annotations

from service.deps import JobDispatcher
from service.errors import BrokerUnavailableError
from service.idempotency import Replay
from trainer.budget import Budget, check_budget
from trainer.datasets import check_split_sizes, dataset_info
from trainer.errors import InvalidInputError
from trainer.registry import FileModelRegistry
from trainer.spec import AnyTrainingSpec
from worker.jobstore import Job, JobError, JobStore
from worker.settings import Settings


def check_augmentation_targets(spec: AnyTrainingSpec, registry: FileModelRegistry) -> None:
    """InvalidInputError (422) for target classes the dataset lacks; 404 for no reference."""
    targets = spec.augmentation.target_classes
    if targets == "weak":
        reference = spec.augmentation.reference_model
        assert reference is not None  # guaranteed by the spec validator
        registry.resolve(reference.model_name, reference.version)  # 404 if it does not exist
        return
    class_names = dataset_info(spec.dataset).class_names
    unknown = [name for name in targets if name not in class_names]
    if unknown:
        raise InvalidInputError(
            f"augmentation.target_classes {unknown} are not classes of {spec.dataset}; "
            f"expected some of: {', '.join(class_names)}",
            field="body.augmentation.target_classes",  # as request validation names it
            received=unknown,
        )


def check_resources(spec: AnyTrainingSpec, settings: Settings) -> None:
    """ResourceBudgetError / InvalidInputError (422) for a job larger than the service allows,
    or with a sample too small to split."""
    check_split_sizes(spec.dataset, spec.sample_fraction, spec.validation_fraction)
    check_budget(
        spec,
        Budget(
            max_parameters=settings.max_model_parameters,
            max_activation_bytes=settings.max_activation_bytes,
            max_training_flops=settings.max_training_flops,
        ),
    )
    limit = spec.time_limit_seconds
    if limit is not None and limit > settings.job_max_time_limit_seconds:
        raise InvalidInputError(
            f"time_limit_seconds is {limit:g}; this service allows at most "
            f"{settings.job_max_time_limit_seconds:g}",
            field="body.time_limit_seconds",
            received=limit,
        )


def submit_job(
    spec: AnyTrainingSpec,
    store: JobStore,
    dispatcher: JobDispatcher,
    registry: FileModelRegistry,
    settings: Settings,
    job_id: str | None = None,
) -> tuple[Job, bool]:
    """Store the job as queued, then hand it to the workers; the job, and whether it
    already existed under ``job_id`` (an idempotency key's replay).

    The job is stored first so a worker can never receive an id the store
    does not know; if the broker then refuses it, the job ends ``failed``
    with the reason instead of waiting forever.
    """
    received = spec.model_dump(mode="json")
    replay = Replay("job", store.get, lambda job: job.spec)
    if (existing := replay.find(job_id, received)) is not None:
        return existing, True
    check_resources(spec, settings)
    check_augmentation_targets(spec, registry)
    job = Job.new(spec=received, model_name=spec.registered_name, job_id=job_id)
    if (existing := replay.create(job_id, received, lambda: store.create(job))) is not None:
        return existing, True
    try:
        dispatcher.enqueue(job.job_id)
    except Exception as error:
        # Whatever stopped the hand-over, no worker has this job: end it now, with the
        # reason, rather than leave it queued until the sweep sends it again (15 min)
        # while the client, told 503, may submit it a second time.
        if isinstance(error, BrokerUnavailableError):
            reason = JobError(type="BrokerUnavailable", message=error.message)
        else:
            reason = JobError(type=type(error).__name__, message=f"could not be queued: {error}")
        store.finish(job.job_id, "failed", error=reason)
        raise
    return job, False
