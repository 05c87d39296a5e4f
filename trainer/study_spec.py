"""What a study is: stages of trainings, what each depends on and how it picks.

A study request names a preset (``cnn-lab``) or lists its stages. Presets expand
into explicit stages when the study is created (``trainer/study_presets.py``), so a
stored study always carries its whole plan. A training inside a stage is either a
full training spec or "the winner of stage X, with these fields changed" — the
lab's protocol retrains whatever won earlier. Free of TensorFlow: the service
imports it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.architectures import ARCHITECTURES
from trainer.datasets import DATASET_NAMES
from trainer.errors import InvalidInputError
from trainer.spec import AnyTrainingSpec, parse_training_spec
from trainer.spec_base import MAX_SEED

STAGE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,23}$"
PRESETS = ("cnn-lab",)
MAX_STAGES = 16
# Specs one stage may run through the winners it builds on (the lab's preset: 8 at most).
MAX_CANDIDATE_SPECS = 256
MAX_LABEL_LENGTH = 100
# What "picking" compares. Only validation figures: the test split is for the report.
PICK_RULE = "highest validation accuracy; ties go to the lower validation loss"


class StageTraining(BaseModel):
    """One training of a stage: a full spec, or an earlier winner's spec changed."""

    model_config = ConfigDict(extra="forbid")

    # Bounded by check_labels when a study is created, not here: a stored study whose
    # labels an older release accepted must still load.
    label: str = Field(
        description=f"What this training is, in the report, e.g. '64/128/256': one line "
        f"of at most {MAX_LABEL_LENGTH} characters."
    )
    spec: dict[str, Any] | None = Field(None, description="A full training spec (POST /jobs).")
    from_winner: str | None = Field(
        None, description="Start from the spec of this stage's winner (a stage named earlier)."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields set on top of the spec (objects are merged key by key).",
    )
    reference_winner: str | None = Field(
        None,
        description="Sets augmentation.reference_model to this stage's winner: 'weak' classes "
        "then mean that model's weak classes (from its validation report).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> StageTraining:
        if (self.spec is None) == (self.from_winner is None):
            raise ValueError("give exactly one of 'spec' and 'from_winner'")
        return self


class StageSpec(BaseModel):
    """One step of a study; stages whose dependencies are done run in parallel."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STAGE_NAME_PATTERN, description="Unique within the study.")
    kind: Literal["train", "select", "report"] = Field(
        "train",
        description="'train' runs its trainings as jobs; 'select' picks the best of the "
        "winners of the stages it depends on; 'report' builds the study report.",
    )
    trainings: list[StageTraining] = Field(default_factory=list, max_length=16)
    depends_on: list[str] = Field(default_factory=list)
    pick: Literal["none", "validation_accuracy"] = Field(
        "none", description="How a train stage picks its winner; select stages always pick."
    )
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> StageSpec:
        if self.kind == "train" and not self.trainings:
            raise ValueError(f"train stage {self.name!r} needs at least one training")
        if self.kind != "train" and self.trainings:
            raise ValueError(f"{self.kind} stage {self.name!r} runs no trainings")
        if self.kind == "select" and not self.depends_on:
            raise ValueError(f"select stage {self.name!r} needs stages to pick from")
        return self

    @property
    def picks(self) -> bool:
        return self.kind == "select" or self.pick != "none"


class StudyRequest(BaseModel):
    """POST /studies: a preset with its knobs, or explicit stages."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["cnn-lab"] | None = Field(None, description="The lab's protocol.")
    stages: list[StageSpec] | None = Field(
        None,
        min_length=1,
        max_length=MAX_STAGES,
        description="Explicit stages instead of a preset.",
    )
    name: str | None = Field(None, max_length=100, description="A label for people.")
    quick: bool = Field(False, description="Small samples and few epochs: a demo or a test.")
    include_reference: bool = Field(
        True, description="Also train the whitened_cnn recipe (preset)."
    )
    primary_dataset: str | None = Field(
        None,
        description="The lab's CIFAR-10 (preset).",
        json_schema_extra={"enum": list(DATASET_NAMES)},
    )
    secondary_dataset: str | None = Field(
        None,
        description="The lab's MNIST (preset).",
        json_schema_extra={"enum": list(DATASET_NAMES)},
    )
    sample_fraction: float | None = Field(
        None, gt=0, le=1, description="Overrides the preset's per-class fraction."
    )
    epochs: int | None = Field(
        None, ge=1, le=500, description="Overrides every preset epoch count."
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _one_plan(self) -> StudyRequest:
        if (self.preset is None) == (self.stages is None):
            raise ValueError("give exactly one of 'preset' and 'stages'")
        for field in ("primary_dataset", "secondary_dataset"):
            value = getattr(self, field)
            if value is not None and value not in DATASET_NAMES:
                raise ValueError(f"{field} must be one of: {', '.join(DATASET_NAMES)}")
        return self


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top; nested objects are merged key by key."""
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def check_labels(stages: list[StageSpec]) -> None:
    """InvalidInputError for a label that is empty, too long or not one line of text.

    A label is shown in tables, plot legends and sentences of the report.
    """
    for stage in stages:
        for index, training in enumerate(stage.trainings):
            label = training.label
            if 0 < len(label) <= MAX_LABEL_LENGTH and label.isprintable():
                continue
            raise InvalidInputError(
                f"stage {stage.name!r}, training {index}: a label is one line of 1 to "
                f"{MAX_LABEL_LENGTH} printable characters",
                field=f"body.stages.{stage.name}.trainings.{index}.label",
                received=label,
            )


def check_stages(stages: list[StageSpec]) -> list[StageSpec]:
    """Stages in a runnable order; InvalidInputError for unknown or circular dependencies."""
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"stage names must be unique, got {names}", field="body.stages")
    earlier: set[str] = set()
    by_name: dict[str, StageSpec] = {}
    for stage in stages:
        # Each stage may only use stages listed before it: no cycles by construction.
        used = {*stage.depends_on}
        for training in stage.trainings:
            used |= {name for name in (training.from_winner, training.reference_winner) if name}
        unknown = sorted(used - earlier)
        if unknown:
            raise InvalidInputError(
                f"stage {stage.name!r} uses {unknown}, which are not stages listed before it; "
                f"list a stage after the stages it depends on",
                field="body.stages",
                received=unknown,
            )
        if stage.kind == "select" or any(t.from_winner for t in stage.trainings):
            _check_winners(stage, by_name)
        missing = sorted(used - set(stage.depends_on))
        if missing:
            raise InvalidInputError(
                f"stage {stage.name!r} uses the winners of {missing}: add them to depends_on",
                field="body.stages",
                received=missing,
            )
        earlier.add(stage.name)
        by_name[stage.name] = stage
    return stages


def training_specs(stages: list[StageSpec]) -> list[StageTrainingSpec]:
    """Every spec the stages' trainings can run with, parsed; InvalidInputError for one that fails.

    A training "from the winner of X" runs with whichever of X's trainings wins, so
    each of them with its overrides on top must be a valid spec: checked when the
    study is created, not when the stage starts hours later. ``stages`` in order.
    """
    candidates: dict[str, list[dict[str, Any]]] = {}  # stage → specs its winner may have
    parsed: dict[str, StageTrainingSpec] = {}
    for stage in stages:
        if stage.kind == "select":
            candidates[stage.name] = [
                spec for name in stage.depends_on for spec in candidates.get(name, [])
            ]
            _check_candidate_count(stage.name, len(candidates[stage.name]))
            continue
        bases_of = [
            [training.spec] if training.spec is not None else candidates[training.from_winner or ""]
            for training in stage.trainings
        ]
        # Counted before any is parsed: a few KB of request must not cost seconds of CPU.
        _check_candidate_count(stage.name, sum(len(bases) for bases in bases_of))
        specs: list[dict[str, Any]] = []
        for training, bases in zip(stage.trainings, bases_of, strict=True):
            for base in bases:
                spec = merged(base, training.overrides)
                if training.reference_winner is not None:
                    # The winner's name is known only then; any valid name checks the rest.
                    reference = {"model_name": "reference-winner", "version": 1}
                    spec = merged(spec, {"augmentation": {"reference_model": reference}})
                specs.append(spec)
                key = f"{stage.name}\0{training.label}\0{json.dumps(spec, sort_keys=True)}"
                if key not in parsed:
                    parsed[key] = StageTrainingSpec(
                        stage.name,
                        training.label,
                        _parsed(stage.name, training.label, spec),
                        reference_from_winner=training.reference_winner is not None,
                    )
        candidates[stage.name] = specs
    return list(parsed.values())


def _check_candidate_count(stage: str, count: int) -> None:
    if count > MAX_CANDIDATE_SPECS:
        raise InvalidInputError(
            f"stage {stage!r} could run {count} different specs through the winners it builds "
            f"on; at most {MAX_CANDIDATE_SPECS} are allowed",
            field="body.stages",
        )


@dataclass(frozen=True)
class StageTrainingSpec:
    """One spec a study's training may run with."""

    stage: str
    label: str
    spec: AnyTrainingSpec
    # Its augmentation.reference_model stands in for a winner not known yet.
    reference_from_winner: bool = False


def has_winner(stage: StageSpec) -> bool:
    """A stage that picks, or that runs a single training, ends with a winner."""
    return stage.picks or (stage.kind == "train" and len(stage.trainings) == 1)


def _check_winners(stage: StageSpec, by_name: dict[str, StageSpec]) -> None:
    names = set(stage.depends_on) if stage.kind == "select" else set()
    for training in stage.trainings:
        names |= {name for name in (training.from_winner, training.reference_winner) if name}
    without = sorted(name for name in names if name in by_name and not has_winner(by_name[name]))
    if without:
        raise InvalidInputError(
            f"stage {stage.name!r} needs the winners of {without}, but they do not pick one; "
            'set "pick": "validation_accuracy" on them',
            field="body.stages",
            received=without,
        )


def _parsed(stage: str, label: str, spec: dict[str, Any]) -> AnyTrainingSpec:
    try:
        return parse_training_spec(spec)
    except ValidationError as error:
        problems = "; ".join(_problem(item) for item in error.errors()[:5])
    except ValueError as error:
        problems = str(error)
    raise InvalidInputError(
        f"stage {stage!r}, training {label!r}, has an invalid training spec: {problems}",
        field="body.stages",
    )


def _problem(item: Any) -> str:
    # Without the architecture tag pydantic puts first for the union of specs.
    location = [str(part) for part in item["loc"] if part not in ARCHITECTURES]
    return f"{'.'.join(location) or 'spec'}: {item['msg']}"


def stage_title(stage: str, label: str) -> str:
    """How a stage's training is named in reports: its label, with the stage unless equal."""
    return label if label == stage else f"{stage}: {label}"


def stage_model_name(study_id: str, stage: str, index: int) -> str:
    """Where a study's training registers: one model per training, version 1."""
    return f"study-{study_id[:12]}-{stage}-{index}".replace("_", "-")


def stage_job_id(study_id: str, stage: str, index: int) -> str:
    """Derived, not random: advancing twice can never start a training twice."""
    return f"{study_id}-{stage}-{index}"


_JOB_ID_RE = re.compile(r"^([0-9a-f]{32})-([a-z][a-z0-9_]*)-([0-9]+)$")


def study_of_job(job_id: str) -> str | None:
    """The study a job belongs to, read from its id; None for a job of its own."""
    match = _JOB_ID_RE.fullmatch(job_id)
    return match.group(1) if match else None
