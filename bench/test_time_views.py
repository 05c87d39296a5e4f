"""Which test-time views pay: each view set on registered models, validation and test.

The choice behind the ``resnet`` recipes' default (``test_time_augmentation``): a
model trained without test-time augmentation is wrapped with each view set its
dataset allows (``trainer.test_time``, exactly what training would register) and
scored on the validation split and on the test split of its own sample. The choice
is made on validation accuracy; the test column is reported, not chosen on.

Train the models first, e.g. (25% samples, seed 42, the recipe's views off)::

    DATA_DIR=../shared/data DACIAVISION_HOME=/tmp/views daciavision train \\
        --architecture resnet --dataset cifar10 --sample-fraction 0.25 \\
        --test-time-augmentation none --model-name cifar10-resnet-plain

then::

    flock /tmp/daciavision-bench.lock .venv/bin/python -m bench.test_time_views \\
        --registry-dir /tmp/views/registry --model cifar10-resnet-plain --model mnist-resnet-plain
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from bench.harness import (
    CpuMeter,
    locked_command,
    publish,
    run_context,
    side_by_side_arguments,
)
from trainer import batch_norm, whitening  # noqa: F401  (registers layers saved models hold)
from trainer.data import prepare
from trainer.datasets import dataset_info
from trainer.registry import FileModelRegistry
from trainer.test_time import VIEWS, with_test_time_augmentation

KEY = "test-time-views"


def _rows(registry: FileModelRegistry, reference: str, data_dir: Path) -> list[str]:
    name, _, version_text = reference.partition(":")
    version = registry.resolve(name, version_text or None)
    card = registry.get_card(name, version)
    if any(layer.layer_type == "TestTimeViews" for layer in card.layers):
        raise SystemExit(f"{name} v{version} already has test-time views: train it with 'none'")
    model = keras.saving.load_model(registry.model_path(name, version), compile=False)
    data = prepare(
        card.dataset.name,
        data_dir,
        sample_fraction=card.dataset.sample_fraction,
        validation_fraction=card.spec.validation_fraction,
        seed=card.dataset.seed,
    )
    flip_safe = dataset_info(card.dataset.name).flip_safe
    choices = ["none", *(views for views in VIEWS if flip_safe or "flip" not in views)]
    rows = []
    for views in choices:
        wrapped = model if views == "none" else with_test_time_augmentation(model, views)
        wrong = {}
        for split_name, split in (("validation", data.validation), ("test", data.test)):
            predicted = wrapped.predict(split.x, batch_size=250, verbose=0).argmax(axis=1)
            wrong[split_name] = (int(np.sum(predicted != split.y)), len(split.y))
        validation, test = (1 - errors / total for errors, total in wrong.values())
        work = 1 if views == "none" else len(VIEWS[views])
        print(f"{name} v{version} {views}: validation {validation:.4f}, test {test:.4f}")
        rows.append(
            f"| {name} v{version} ({card.architecture}, {card.dataset.name}) | `{views}` "
            f"| {validation:.4f} | {test:.4f} ({wrong['test'][0]} wrong) | {work}× |"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser: argparse.ArgumentParser = side_by_side_arguments(__doc__ or "")
    parser.add_argument("--registry-dir", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="NAME[:VERSION]")
    args = parser.parse_args(argv)
    command = locked_command("bench.test_time_views", argv)
    registry = FileModelRegistry(args.registry_dir)
    meter = CpuMeter()
    rows = [row for reference in args.model for row in _rows(registry, reference, args.data_dir)]
    cpu = meter.stop()
    body = f"""## Which test-time views pay

{run_context(cpu)}
- **Protocol:** each model was trained with `--test-time-augmentation none` (its card
  names the sample); here it is wrapped with every view set its dataset allows
  (mirroring only where it keeps the class) and scored on its validation split, on
  which the choice is made, and once on its test split. Shifts repeat the edge pixel,
  as training's shifts do. Inference work is per image, against the plain model.

| Model | Views | Validation accuracy | Test accuracy | Inference work |
|---|---|---|---|---|
{chr(10).join(rows)}
"""
    publish(KEY, body, command, args)


if __name__ == "__main__":
    main()
