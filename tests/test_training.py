"""Training learns (not just runs), reports progress, and stops on request."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.augmentation import build_augmenter, oversample
from trainer.data import prepare
from trainer.datasets import DATASETS
from trainer.errors import TrainingCancelledError, TrainingDivergedError
from trainer.evaluate import evaluate
from trainer.progress import EpochProgress
from trainer.spec import parse_training_spec
from trainer.spec_base import AugmentationSpec
from trainer.train import _ProgressCallback, inference_copy, train

SMALL_CNN = {"filters1": 16, "filters2": 32, "dense_units": 64}


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return prepare("digits", None, sample_fraction=1.0, validation_fraction=0.1, seed=42)


def test_custom_cnn_learns_digits_to_ninety_percent(digits) -> None:  # type: ignore[no-untyped-def]
    spec = parse_training_spec(
        {"dataset": "digits", "hyperparameters": SMALL_CNN, "epochs": 12, "batch_size": 32}
    )
    epochs: list[EpochProgress] = []
    result = train(spec, None, data=digits, progress=[epochs.append])
    report = evaluate(result.model, digits.test.x, digits.test.y, digits.info.class_names)
    assert report.accuracy >= 0.90, report.accuracy
    assert [record.epoch for record in epochs] == list(range(1, 13))
    assert epochs[-1].loss < epochs[0].loss
    assert all(record.val_accuracy is not None and record.seconds > 0 for record in epochs)
    assert result.history == epochs

    # What the registry stores predicts exactly like the trained model.
    copy = inference_copy(result.model)
    np.testing.assert_allclose(
        copy.predict(digits.test.x[:16], verbose=0),
        result.model.predict(digits.test.x[:16], verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    assert getattr(copy, "optimizer", None) is None


def test_alexnet_learns_digits_with_one_cycle_and_augmentation(digits) -> None:  # type: ignore[no-untyped-def]
    spec = parse_training_spec(
        {
            "dataset": "digits",
            "architecture": "alexnet",
            "epochs": 6,
            "batch_size": 32,
            "lr_schedule": "one_cycle",
            "learning_rate": 2e-3,
            # Half the lab's widths: the same layers in 18 s instead of 44 on two cores.
            "hyperparameters": {"conv_filters": [16, 32, 64, 64, 32], "dense_units": [128, 64]},
            "augmentation": {"target_classes": ["8", "9"], "oversample_factor": 2},
        }
    )
    result = train(spec, None, data=digits, target_classes=["8", "9"])
    report = evaluate(result.model, digits.test.x, digits.test.y, digits.info.class_names)
    assert report.accuracy >= 0.85, report.accuracy
    recorded = [record.learning_rate for record in result.history]
    rates = [rate for rate in recorded if rate is not None]
    assert len(rates) == len(recorded), "every epoch records its learning rate"
    assert max(rates) > rates[0] and rates[-1] < max(rates) / 10  # warm up, then anneal


def test_resnet_small_learns_digits_with_its_own_recipe(digits) -> None:  # type: ignore[no-untyped-def]
    # Only the epochs and batch size are scaled to 1,600 tiny images: the optimizer,
    # schedule, smoothing and augmentation are the architecture's defaults.
    spec = parse_training_spec(
        {"dataset": "digits", "architecture": "resnet_small", "epochs": 4, "batch_size": 32}
    )
    assert (spec.optimizer, spec.lr_schedule) == ("sgd", "one_cycle")
    result = train(spec, None, data=digits)
    report = evaluate(result.model, digits.test.x, digits.test.y, digits.info.class_names)
    assert report.accuracy >= 0.90, report.accuracy


def test_cancel_stops_within_one_compiled_call(digits) -> None:  # type: ignore[no-untyped-def]
    spec = parse_training_spec({"dataset": "digits", "epochs": 50, "batch_size": 8})
    checks = 0

    def should_cancel() -> bool:
        nonlocal checks
        checks += 1
        return checks >= 5

    epochs: list[EpochProgress] = []
    with pytest.raises(TrainingCancelledError):
        train(spec, None, data=digits, progress=[epochs.append], should_cancel=should_cancel)
    assert checks == 5  # no compiled call ran after the one that saw the request
    assert epochs == []


@pytest.mark.parametrize("loss", [float("nan"), float("inf")])
def test_an_epoch_whose_loss_is_not_a_number_ends_training(loss: float) -> None:
    reported: list[EpochProgress] = []
    callback = _ProgressCallback(epochs=5, listeners=[reported.append])
    with pytest.raises(TrainingDivergedError, match="after epoch 3 of 5"):
        callback.on_epoch_end(2, {"loss": loss, "accuracy": 0.1})
    assert reported == []


def test_an_overflowing_validation_loss_is_reported_as_missing() -> None:
    reported: list[EpochProgress] = []
    callback = _ProgressCallback(epochs=5, listeners=[reported.append])
    logs = {"loss": 2.0, "accuracy": 0.3, "val_loss": float("inf"), "val_accuracy": 0.2}
    callback.on_epoch_end(0, logs)
    assert reported[0].val_loss is None
    assert reported[0].val_accuracy == pytest.approx(0.2)


def test_epoch_progress_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        EpochProgress(epoch=1, epochs=1, loss=float("nan"), accuracy=0.1, seconds=1.0)


def test_early_stopping_ends_before_the_epoch_budget(digits) -> None:  # type: ignore[no-untyped-def]
    spec = parse_training_spec(
        {
            "dataset": "digits",
            "hyperparameters": SMALL_CNN,
            "epochs": 60,
            "learning_rate": 0.01,
            "early_stopping_patience": 2,
        }
    )
    result = train(spec, None, data=digits)
    assert result.stopped_early
    assert result.epochs_run < 60
    # The best epoch's weights are handed back: the one of the lowest validation loss.
    losses = [epoch.val_loss for epoch in result.history]
    assert result.weights_epoch == 1 + losses.index(min(losses))  # type: ignore[type-var]
    assert result.weights_epoch <= result.epochs_run - 2  # patience 2: no better epoch since


def test_oversample_repeats_target_classes_only() -> None:
    images = np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1)
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
    all_images, all_labels = oversample(images, labels, [2], factor=3)
    assert np.bincount(all_labels).tolist() == [2, 2, 6]
    assert sorted(all_images[all_labels == 2].ravel().tolist()) == [2, 2, 2, 5, 5, 5]
    same_images, same_labels = oversample(images, labels, [], factor=3)
    assert same_images is images and same_labels is labels


def test_target_classes_augment_every_class() -> None:
    # Augmenting the targets alone made the transforms a sign of those classes.
    targeted = AugmentationSpec(target_classes=["cat"])
    assert targeted.enabled
    stored = AugmentationSpec.model_validate({"enabled": False, "target_classes": ["cat"]})
    assert stored.enabled, "a spec stored with enabled false beside targets still augments all"
    assert not AugmentationSpec().enabled


def targeted_epoch(digits, **augmentation: object) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """One epoch's images and labels with class 8 targeted (3 views each), rotations only."""
    import tensorflow as tf

    from trainer.train import _training_dataset

    settings = {"rotation_degrees": 30, "width_shift": 0, "height_shift": 0, "zoom": 0}
    targets = {"target_classes": ["8"], "oversample_factor": 3}
    spec = parse_training_spec(
        {"dataset": "digits", "augmentation": {**targets, **settings, **augmentation}}
    )
    batches = list(_training_dataset(spec, digits, ["8"], tf.Variable(0)))
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert np.bincount(labels)[8] == 3 * np.bincount(digits.train.y)[8]
    return images, labels


def test_training_batches_come_without_tf_datas_autotuning(digits) -> None:  # type: ignore[no-untyped-def]
    # Dropping an autotuned iterator at an epoch's end sometimes stalled for seconds
    # (trainer/train.py); every epoch drops one.
    import tensorflow as tf

    from trainer.train import _training_dataset

    spec = parse_training_spec({"dataset": "digits", "augmentation": {"enabled": True}})
    dataset = _training_dataset(spec, digits, [], tf.Variable(0))
    assert dataset.options().autotune.enabled is False
    images, labels = next(iter(dataset))
    assert images.shape[0] == labels.shape[0] == spec.batch_size


def test_targeted_training_augments_the_other_classes_too(digits) -> None:  # type: ignore[no-untyped-def]
    images, labels = targeted_epoch(digits)
    originals = {image.tobytes() for image in digits.train.x}
    others = images[labels != 8]
    unchanged = sum(image.tobytes() in originals for image in others)
    assert unchanged < 0.05 * len(others), f"{unchanged} of {len(others)} left as they were"


def test_augmenting_only_the_targets_leaves_the_other_classes_as_they_were(digits) -> None:  # type: ignore[no-untyped-def]
    # The lab's weak-class retrain, and models with targets carded before schema 5.
    images, labels = targeted_epoch(digits, augmented_classes="targets")
    originals = {image.tobytes() for image in digits.train.x}
    others, targets = images[labels != 8], images[labels == 8]
    assert all(image.tobytes() in originals for image in others)
    unchanged = sum(image.tobytes() in originals for image in targets)
    assert unchanged < 0.05 * len(targets), f"{unchanged} of {len(targets)} targets unchanged"


def test_augmenting_only_the_targets_needs_targets() -> None:
    with pytest.raises(ValueError, match="needs target_classes"):
        AugmentationSpec(augmented_classes="targets")
    assert AugmentationSpec(target_classes=["cat"]).augmented_classes == "all"


def test_flip_is_off_for_digits_and_on_for_natural_images() -> None:
    default = AugmentationSpec(enabled=True)
    digit_layers = [
        type(layer).__name__ for layer in build_augmenter(default, DATASETS["mnist"], 1).layers
    ]
    cifar_layers = [
        type(layer).__name__ for layer in build_augmenter(default, DATASETS["cifar10"], 1).layers
    ]
    assert "RandomFlip" not in digit_layers
    assert cifar_layers[0] == "RandomFlip"
    assert {"RandomRotation", "RandomTranslation", "RandomZoom"} <= set(digit_layers)
    forced = AugmentationSpec(enabled=True, horizontal_flip=True)
    assert "RandomFlip" in [
        type(layer).__name__ for layer in build_augmenter(forced, DATASETS["mnist"], 1).layers
    ]


def test_cutout_hides_one_square_per_image_in_the_images_mean_colour() -> None:
    spec = AugmentationSpec(
        enabled=True, rotation_degrees=0, width_shift=0, height_shift=0, zoom=0, cutout=0.25
    )
    augmenter = build_augmenter(spec, DATASETS["mnist"], seed=3)
    assert [type(layer).__name__ for layer in augmenter.layers] == ["RandomCutout"]
    batch = np.random.default_rng(0).random((32, 28, 28, 1)).astype(np.float32)
    augmented = np.asarray(augmenter(batch, training=True))
    side = 7  # a quarter of 28 pixels
    for before, after in zip(batch, augmented, strict=True):
        rows, columns = np.nonzero(np.abs(after - before)[..., 0] > 0)
        assert 0 < len(rows) <= side * side
        height, width = np.ptp(rows) + 1, np.ptp(columns) + 1
        assert height <= side and width <= side
        assert len(rows) == height * width, "one solid rectangle (a square cut by the border)"
        np.testing.assert_allclose(after[rows, columns, 0], before.mean(), rtol=1e-5)
    # Centres anywhere: the squares are not all in one place.
    corners = {tuple(np.argwhere(a != b)[0]) for a, b in zip(batch, augmented, strict=True)}
    assert len(corners) > 5


def test_cutout_squares_lie_anywhere_in_the_training_input_pipeline() -> None:
    # Inside a tf.data map, as training runs it, not eagerly as above: there random ops
    # sharing a seed draw the same numbers, and every square once sat on the diagonal.
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(42)
    spec = AugmentationSpec(
        enabled=True, rotation_degrees=0, width_shift=0, height_shift=0, zoom=0, cutout=0.25
    )
    augmenter = build_augmenter(spec, DATASETS["mnist"], seed=3)
    batch = np.random.default_rng(0).random((64, 28, 28, 1)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensors(batch).map(lambda x: augmenter(x, training=True))
    augmented = next(iter(dataset)).numpy()
    centres = []
    for before, after in zip(batch, augmented, strict=True):
        rows, columns = np.nonzero(np.abs(after - before)[..., 0] > 0)
        centres.append((rows.min() + rows.max(), columns.min() + columns.max()))
    on_diagonal = sum(row == column for row, column in centres)
    assert on_diagonal < 16, f"{on_diagonal} of 64 squares centred on the diagonal"
    assert len(set(centres)) > 20


def test_augmenter_changes_images_but_keeps_shape() -> None:
    augmenter = build_augmenter(AugmentationSpec(enabled=True), DATASETS["cifar10"], seed=7)
    batch = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    augmented = np.asarray(augmenter(batch, training=True))
    assert augmented.shape == batch.shape
    assert not np.allclose(augmented, batch)


def _shifted(image: np.ndarray, down: int, right: int, pad: int) -> np.ndarray:
    """``image`` moved by whole pixels over a mirrored border (Keras' 'reflect')."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    return padded[pad - down : pad - down + height, pad - right : pad - right + width]


def test_whole_pixel_shifts_move_images_by_whole_pixels_without_blurring() -> None:
    spec = AugmentationSpec(
        enabled=True,
        rotation_degrees=0,
        zoom=0,
        width_shift=2 / 32,
        height_shift=2 / 32,
        horizontal_flip=False,
        whole_pixel_shifts=True,
    )
    augmenter = build_augmenter(spec, DATASETS["cifar10"], seed=5)
    batch = np.random.default_rng(1).random((64, 32, 32, 3)).astype(np.float32)
    augmented = np.asarray(augmenter(batch, training=True))
    shifts = [(down, right) for down in range(-2, 3) for right in range(-2, 3)]
    seen = set()
    for before, after in zip(batch, augmented, strict=True):
        matches = [s for s in shifts if np.array_equal(after, _shifted(before, *s, pad=2))]
        assert matches, "every image is its original moved by whole pixels, values untouched"
        seen.add(matches[0])
    assert len(seen) >= 9, seen  # shifts of up to 2 pixels, both ways, on both axes
    # The lab's fractional shifts interpolate: most images hold values no pixel had.
    fractional = spec.model_copy(update={"whole_pixel_shifts": False})
    blurred = np.asarray(build_augmenter(fractional, DATASETS["cifar10"], 5)(batch, training=True))
    pairs = zip(batch, blurred, strict=True)
    assert sum(not np.isin(after, before).all() for before, after in pairs) > 32
