"""Every architecture the service can train, each defined once in its own module.

A module in this package that defines ``DEFINITION`` (an ``ArchitectureDefinition``)
is an architecture: the spec union, the CLI's choices, the OpenAPI schema, examples
and error messages all derive from ``ARCHITECTURES``. See docs/development.md for how
to add one. Importing this package never imports Keras.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import BaseModel

from trainer.architectures.base import ArchitectureDefinition, ModelCost, Shape
from trainer.errors import InvalidInputError


def _discover() -> dict[str, ArchitectureDefinition]:
    found: dict[str, ArchitectureDefinition] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        definition = getattr(module, "DEFINITION", None)
        if isinstance(definition, ArchitectureDefinition):
            found[definition.name] = definition
    # The default first: it is what /docs and the CLI show first.
    return dict(sorted(found.items(), key=lambda item: not item[1].default))


ARCHITECTURES: dict[str, ArchitectureDefinition] = _discover()
ARCHITECTURE_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)
DEFAULT_ARCHITECTURE: str = next(name for name, d in ARCHITECTURES.items() if d.default)


def architecture(name: str) -> ArchitectureDefinition:
    """The definition of an architecture; InvalidInputError naming the choices if unknown."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown architecture {name!r}; expected one of: {', '.join(ARCHITECTURES)}",
            architecture=name,
        ) from None


def build_model(name: str, hyperparameters: BaseModel, input_shape: Shape, num_classes: int) -> Any:
    """Build the named architecture (a Keras model) for one input shape and class count."""
    return architecture(name).build(hyperparameters, input_shape, num_classes)


def estimate_cost(
    name: str, hyperparameters: BaseModel, input_shape: Shape, num_classes: int
) -> ModelCost:
    """Parameters, activations and FLOPs of the named architecture, without building it."""
    return architecture(name).estimate_cost(hyperparameters, input_shape, num_classes)
