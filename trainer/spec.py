"""The training spec: everything a training run needs, validated up front.

One spec class per architecture (its recipe, defined with the architecture in
``trainer/architectures/``), joined here in a union discriminated on
``architecture``, so a request is validated against that architecture's own
hyperparameter schema and training defaults, and the OpenAPI document names every
architecture with its hyperparameters. Free of TensorFlow: the service imports it.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag, TypeAdapter

from trainer.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
from trainer.spec_base import TrainingSpecBase

# Every architecture's spec class is a TrainingSpecBase; code that handles any of them
# uses this name, and reads architecture-specific fields through the definition.
AnyTrainingSpec = TrainingSpecBase


def _architecture_of(value: Any) -> str:
    # A request without "architecture" gets the default architecture (the lab's CNN).
    if isinstance(value, dict):
        return str(value.get("architecture", DEFAULT_ARCHITECTURE))
    return str(getattr(value, "architecture", DEFAULT_ARCHITECTURE))


_SPEC_CLASSES = tuple(
    Annotated[definition.spec, Tag(name)] for name, definition in ARCHITECTURES.items()
)

TrainingSpec: Any = Annotated[
    Union[_SPEC_CLASSES],  # noqa: UP007 - a union built from the definitions at import
    Discriminator(
        _architecture_of,
        custom_error_type="unknown_architecture",
        custom_error_message=f"architecture must be one of: {', '.join(ARCHITECTURES)}",
    ),
]

training_spec_adapter: TypeAdapter[TrainingSpecBase] = TypeAdapter(TrainingSpec)


def parse_training_spec(data: dict[str, Any]) -> TrainingSpecBase:
    """Validate a plain dict (JSON, CLI flags) into the architecture's spec class."""
    return training_spec_adapter.validate_python(data)
