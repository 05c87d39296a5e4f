"""Test-time augmentation: the wrapped model averages the right copies, and is what is served."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from trainer.architectures import build_model
from trainer.architectures.custom_cnn import CustomCnnHyperparameters
from trainer.evaluate import predict_probabilities
from trainer.registry import FileModelRegistry
from trainer.run import train_and_register
from trainer.spec import parse_training_spec
from trainer.test_time import VIEWS, view_count, with_test_time_augmentation


def _numpy_copy(images: np.ndarray, down: int, right: int, mirrored: bool) -> np.ndarray:
    """The same copy computed independently: mirror, then shift with the edge repeated."""
    if mirrored:
        images = images[:, :, ::-1]
    height, width = images.shape[1:3]
    padded = np.pad(images, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="edge")
    return padded[:, 1 - down : 1 - down + height, 1 - right : 1 - right + width]


@pytest.mark.parametrize("views", sorted(VIEWS))
def test_the_wrapped_model_predicts_the_mean_over_its_copies(views: str) -> None:
    model = build_model(
        "custom_cnn", CustomCnnHyperparameters(filters1=4, filters2=4), (8, 8, 3), 5
    )
    images = np.random.default_rng(0).random((6, 8, 8, 3), dtype=np.float32)
    expected = np.mean(
        [model.predict(_numpy_copy(images, *view), verbose=0) for view in VIEWS[views]], axis=0
    )
    wrapped = with_test_time_augmentation(model, views).predict(images, verbose=0)
    np.testing.assert_allclose(wrapped, expected, atol=1e-6)
    # The copies differ, so the mean is not the plain prediction.
    assert np.abs(wrapped - model.predict(images, verbose=0)).max() > 1e-4


def test_evaluation_gives_a_model_with_views_that_many_times_fewer_images_a_batch() -> None:
    # Its network sees every view of each image: 256 images with ten views held about
    # 570 MiB more than training did.
    model = build_model(
        "custom_cnn", CustomCnnHyperparameters(filters1=4, filters2=4), (8, 8, 3), 5
    )
    wrapped = with_test_time_augmentation(model, "flip_and_shifts")
    assert (view_count(model), view_count(wrapped)) == (1, 10)
    images = np.random.default_rng(1).random((60, 8, 8, 3), dtype=np.float32)
    batch_sizes: list[int] = []
    predict = wrapped.predict

    def recording_predict(inputs: np.ndarray, batch_size: int, verbose: int) -> np.ndarray:
        batch_sizes.append(batch_size)
        return np.asarray(predict(inputs, batch_size=batch_size, verbose=verbose))

    wrapped.predict = recording_predict
    probabilities = predict_probabilities(wrapped, images, batch_size=40)
    assert batch_sizes == [4]
    np.testing.assert_allclose(probabilities, predict(images, verbose=0), atol=1e-6)


def test_mirroring_is_refused_for_digits_and_shifts_are_not() -> None:
    with pytest.raises(ValidationError, match="use 'shifts' or 'none'"):
        parse_training_spec({"dataset": "mnist", "test_time_augmentation": "flip_and_shifts"})
    spec = parse_training_spec({"dataset": "mnist", "test_time_augmentation": "shifts"})
    assert spec.test_time_augmentation == "shifts"
    assert parse_training_spec({"dataset": "cifar10"}).test_time_augmentation == "none"


def test_a_model_trained_with_shifts_is_registered_and_served_wrapped(tmp_path: Path) -> None:
    spec = parse_training_spec(
        {
            "dataset": "digits",
            "hyperparameters": {"filters1": 16, "filters2": 32, "dense_units": 64},
            "epochs": 6,
            "batch_size": 32,
            "test_time_augmentation": "shifts",
            "model_name": "digits-shifts",
        }
    )
    registry = FileModelRegistry(tmp_path / "registry")
    card = train_and_register(spec, data_dir=None, registry=registry).card
    assert card.metrics.test.accuracy >= 0.9, card.metrics.test.accuracy
    layer_types = [layer.layer_type for layer in card.layers]
    assert layer_types[:2] == ["InputLayer", "TestTimeViews"]
    assert layer_types[-1] == "MeanOverViews" and "Conv2D" in layer_types
    # Its speed is timed on 256 network inputs: 51 images of five views each.
    assert card.inference is not None and card.inference.batch_size == 51
    # The registry stores no optimizer, not even inside the wrapped network.
    with zipfile.ZipFile(registry.model_path("digits-shifts", 1)) as saved:
        saved_config = json.loads(saved.read("config.json"))
    assert not _compile_configs(saved_config)

    # A fresh serving process (which never imported the trainer) loads the wrapped model
    # through the model cache and predicts what the card's test predictions say.
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from service.model_cache import ModelCache
        from trainer.data import prepare
        from trainer.registry import FileModelRegistry

        cache = ModelCache(FileModelRegistry({str(registry.root)!r}), capacity=1)
        loaded = cache.get("digits-shifts", 1)
        test = prepare("digits", None, sample_fraction=1.0, validation_fraction=0.1, seed=42).test
        print(json.dumps([type(layer).__name__ for layer in loaded.model.layers]))
        print(json.dumps(loaded.predict(test.x).argmax(axis=1).tolist()))
        cache.close()
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    served_layers, served_predictions = finished.stdout.strip().splitlines()[-2:]
    assert "TestTimeViews" in served_layers
    assert [int(label) for label in served_predictions.strip("[]").split(",")] == (
        card.test_predictions
    )


def _compile_configs(config: object) -> list[object]:
    """Every non-empty ``compile_config`` in a saved model's config, nested ones included."""
    if isinstance(config, dict):
        found = [config["compile_config"]] if config.get("compile_config") else []
        return found + [item for value in config.values() for item in _compile_configs(value)]
    if isinstance(config, list):
        return [item for value in config for item in _compile_configs(value)]
    return []
