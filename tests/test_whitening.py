"""The whitening layer decorrelates patches of the images it was fitted to, and survives saving."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest

from trainer import whitening
from trainer.registry import FileModelRegistry
from trainer.run import train_and_register
from trainer.spec import parse_training_spec
from trainer.whitening import PatchWhitening


def correlated_images(count: int, size: int = 12, channels: int = 3) -> np.ndarray:
    """Smooth images with correlated channels: neighbouring pixels and colours covary."""
    rng = np.random.default_rng(7)
    noise = rng.normal(size=(count, size + 1, size + 1, 1)).astype(np.float32)
    smooth = (noise[:, :-1, :-1] + noise[:, 1:, :-1] + noise[:, :-1, 1:] + noise[:, 1:, 1:]) / 4
    colours = np.array([1.0, 0.8, 0.5], dtype=np.float32)[:channels]
    images = 0.5 + 0.2 * smooth * colours + 0.02 * rng.normal(size=(count, size, size, channels))
    return images.astype(np.float32)


def patches_of(images: np.ndarray, size: int = 2) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * images.shape[-1])


def test_adapted_layer_outputs_decorrelated_unit_variance_channels() -> None:
    images = correlated_images(200)
    before = np.corrcoef(patches_of(images), rowvar=False)
    assert np.abs(before - np.eye(12)).max() > 0.5, "the test images must be correlated"

    layer = PatchWhitening(epsilon=1e-6)
    layer.adapt(images)
    outputs = np.asarray(layer(images))
    assert outputs.shape == (200, 11, 11, 24)
    # The first half are the whitened axes, the second half their negatives.
    np.testing.assert_allclose(outputs[..., 12:], -outputs[..., :12], atol=1e-5)
    whitened = outputs[..., :12].reshape(-1, 12)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(12), atol=0.02)
    np.testing.assert_allclose(whitened.mean(axis=0), 0, atol=0.02)


def test_adapt_reads_the_images_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # What it allocates must not grow with the training set: a float64 copy of the 25%
    # CIFAR-10 sample, which its standard deviation once made, was 270 MB.
    monkeypatch.setattr(whitening, "_CHUNK_IMAGES", 100)
    images = correlated_images(2000, size=32)
    layer = PatchWhitening()
    layer.build(images.shape)
    tracemalloc.start()
    try:
        layer.adapt(images)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < images.nbytes / 2
    # The same statistics as over all the images at once.
    whole = images.std(axis=(0, 1, 2), dtype=np.float64)
    np.testing.assert_allclose(layer.inverse_std.numpy(), 1 / whole, rtol=1e-6)


def test_only_the_bias_trains() -> None:
    layer = PatchWhitening()
    layer.build((None, 8, 8, 1))
    assert [weight.name for weight in layer.trainable_weights] == ["bias"]
    assert len(layer.non_trainable_weights) == 3  # mean, inverse_std, kernel


def test_a_constant_channel_is_left_unscaled_not_divided_by_zero() -> None:
    images = correlated_images(50)
    images[..., 2] = 0.0
    layer = PatchWhitening()
    layer.adapt(images)
    assert np.isfinite(np.asarray(layer(images))).all()
    assert float(layer.inverse_std.numpy()[2]) == 1.0


def test_a_saved_model_reloads_with_its_fitted_filters(tmp_path: Path) -> None:
    images = correlated_images(40)
    inputs = keras.Input(shape=images.shape[1:])
    model = keras.Model(inputs, PatchWhitening(name="whitening")(inputs))
    model.get_layer("whitening").adapt(images)
    path = tmp_path / "model.keras"
    model.save(path)
    # safe_mode, as the service loads models.
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(np.asarray(reloaded(images[:4])), np.asarray(model(images[:4])))


@pytest.mark.parametrize("channels", [1, 3])
def test_filter_count_follows_the_channels(channels: int) -> None:
    layer = PatchWhitening()
    layer.adapt(correlated_images(20, channels=channels))
    assert layer.kernel.shape == (2, 2, channels, 8 * channels)


def test_whitened_cnn_learns_digits_and_a_fresh_server_predicts_as_the_card_says(
    tmp_path: Path,
) -> None:
    # Narrower groups and fewer epochs for 1,600 tiny images; the training settings,
    # and the whitening layer fitted before the first step, are the architecture's own.
    spec = parse_training_spec(
        {
            "dataset": "digits",
            "architecture": "whitened_cnn",
            "hyperparameters": {"group_filters": [16, 32, 64]},
            "epochs": 6,
            "batch_size": 32,
            "model_name": "digits-whitened",
        }
    )
    assert (spec.optimizer, spec.label_smoothing) == ("sgd", 0.2)
    registry = FileModelRegistry(tmp_path / "registry")
    card = train_and_register(spec, data_dir=None, registry=registry).card
    assert card.metrics.test.accuracy >= 0.9, card.metrics.test.accuracy
    assert [layer.layer_type for layer in card.layers][1] == "PatchWhitening"

    # A serving process that never imported the trainer loads it through the model cache.
    script = textwrap.dedent(
        f"""
        import json
        from service.model_cache import ModelCache
        from trainer.data import prepare
        from trainer.registry import FileModelRegistry

        cache = ModelCache(FileModelRegistry({str(registry.root)!r}), capacity=1)
        loaded = cache.get("digits-whitened", 1)
        test = prepare("digits", None, sample_fraction=1.0, validation_fraction=0.1, seed=42).test
        print(json.dumps(loaded.predict(test.x).argmax(axis=1).tolist()))
        cache.close()
        """
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert json.loads(finished.stdout.strip().splitlines()[-1]) == card.test_predictions
