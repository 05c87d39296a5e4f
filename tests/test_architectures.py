"""Architectures build the lab's models exactly: parameter counts prove it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from pydantic import ValidationError

from trainer import precision
from trainer.architectures import ARCHITECTURES, build_model, estimate_cost
from trainer.architectures.alexnet import AlexNetHyperparameters
from trainer.architectures.custom_cnn import CustomCnnHyperparameters, CustomCnnSpec
from trainer.architectures.resnet import ResNetHyperparameters
from trainer.architectures.resnet_small import SmallResNetHyperparameters
from trainer.architectures.whitened_cnn import WhitenedCnnHyperparameters
from trainer.spec import parse_training_spec

CIFAR10 = (32, 32, 3)
MNIST = (28, 28, 1)


@pytest.mark.parametrize(
    ("architecture", "hyperparameters", "input_shape", "expected"),
    [
        ("custom_cnn", CustomCnnHyperparameters(), CIFAR10, 545_098),
        (
            "custom_cnn",
            CustomCnnHyperparameters(filters1=64, filters2=128, dense_units=256),
            CIFAR10,
            2_175_626,
        ),
        ("alexnet", AlexNetHyperparameters(), CIFAR10, 611_210),
        ("custom_cnn", CustomCnnHyperparameters(), MNIST, 421_642),
        ("alexnet", AlexNetHyperparameters(), MNIST, 495_946),
    ],
    ids=["custom-cifar10", "custom-64-128-256", "alexnet-cifar10", "custom-mnist", "alexnet-mnist"],
)
def test_parameter_counts_match_the_lab(
    architecture: str, hyperparameters: object, input_shape: tuple[int, int, int], expected: int
) -> None:
    model = build_model(architecture, hyperparameters, input_shape, 10)  # type: ignore[arg-type]
    assert model.count_params() == expected


@pytest.mark.parametrize("input_shape", [CIFAR10, MNIST])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_builds_for_both_input_shapes(
    architecture: str, input_shape: tuple[int, int, int]
) -> None:
    hyperparameters = ARCHITECTURES[architecture].hyperparameters()
    model = build_model(architecture, hyperparameters, input_shape, 10)
    assert model.input_shape == (None, *input_shape)
    assert model.output_shape == (None, 10)


def test_custom_cnn_options_add_blocks_and_batch_norm() -> None:
    plain = build_model("custom_cnn", CustomCnnHyperparameters(), CIFAR10, 10)
    deeper = build_model(
        "custom_cnn",
        CustomCnnHyperparameters(extra_conv_filters=[128], batch_norm=True),
        CIFAR10,
        10,
    )
    assert any(layer.name == "conv3" for layer in deeper.layers)
    assert any("bn" in layer.name for layer in deeper.layers)
    assert not any("bn" in layer.name for layer in plain.layers)


def test_resnet_has_residual_connections_and_batch_norm() -> None:
    model = build_model("resnet", ResNetHyperparameters(), CIFAR10, 10)
    assert any(layer.__class__.__name__ == "Add" for layer in model.layers)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_spec_validates_hyperparameters_against_the_architecture() -> None:
    spec = parse_training_spec({"dataset": "cifar10", "hyperparameters": {"filters1": 64}})
    assert isinstance(spec, CustomCnnSpec)
    assert spec.hyperparameters.filters1 == 64 and spec.hyperparameters.filters2 == 64
    with pytest.raises(ValidationError) as caught:
        parse_training_spec(
            {"dataset": "cifar10", "architecture": "alexnet", "hyperparameters": {"filters1": 64}}
        )
    error = caught.value.errors()[0]
    assert error["loc"][-2:] == ("hyperparameters", "filters1")
    assert error["type"] == "extra_forbidden"
    with pytest.raises(ValidationError, match="architecture must be one of"):
        parse_training_spec({"dataset": "cifar10", "architecture": "vgg99"})


def test_spec_rejects_unsafe_model_names_and_bad_fractions() -> None:
    with pytest.raises(ValidationError, match=r"model name '\.\./etc' is not allowed"):
        parse_training_spec({"dataset": "mnist", "model_name": "../etc"})
    with pytest.raises(ValidationError, match="sample_fraction"):
        parse_training_spec({"dataset": "mnist", "sample_fraction": 0})
    spec = parse_training_spec({"dataset": "fashion_mnist", "architecture": "alexnet"})
    assert spec.registered_name == "fashion-mnist-alexnet"


def test_resnet_defaults_are_the_benchmarked_recipe() -> None:
    spec = parse_training_spec({"dataset": "cifar10", "architecture": "resnet"})
    assert (spec.optimizer, spec.learning_rate, spec.lr_schedule) == ("sgd", 0.2, "one_cycle")
    assert (spec.epochs, spec.batch_size, spec.label_smoothing) == (16, 128, 0.1)
    assert spec.augmentation.enabled and spec.augmentation.rotation_degrees == 0
    # resnet_small: the same recipe on half the widths, in half the epochs.
    small = parse_training_spec({"dataset": "cifar10", "architecture": "resnet_small"})
    shared = (
        "optimizer",
        "learning_rate",
        "lr_schedule",
        "batch_size",
        "label_smoothing",
        "test_time_augmentation",
    )
    assert [getattr(small, name) for name in shared] == [getattr(spec, name) for name in shared]
    assert small.augmentation == spec.augmentation
    assert small.epochs == 8
    assert isinstance(small.hyperparameters, SmallResNetHyperparameters)
    assert small.hyperparameters.stage_filters == [32, 64, 128]
    assert small.hyperparameters.stem_filters == 16
    # The other architectures keep the lab's training defaults.
    lab = parse_training_spec({"dataset": "cifar10"})
    assert (lab.optimizer, lab.learning_rate, lab.augmentation.enabled) == ("adam", 1e-3, False)
    assert lab.test_time_augmentation == "none"


def test_resnet_mirrors_at_test_time_only_where_a_mirror_keeps_the_class() -> None:
    assert (
        parse_training_spec({"dataset": "cifar10", "architecture": "resnet"}).test_time_augmentation
        == "flip"
    )
    for dataset in ("mnist", "digits"):
        spec = parse_training_spec({"dataset": dataset, "architecture": "resnet_small"})
        assert spec.test_time_augmentation == "none"
    asked = {"dataset": "mnist", "architecture": "resnet", "test_time_augmentation": "shifts"}
    assert parse_training_spec(asked).test_time_augmentation == "shifts"
    with pytest.raises(ValidationError, match="changes what a mnist image shows"):
        parse_training_spec({**asked, "test_time_augmentation": "flip"})


def test_whitened_cnn_defaults_are_its_benchmarked_recipe() -> None:
    spec = parse_training_spec({"dataset": "cifar10", "architecture": "whitened_cnn"})
    assert (spec.optimizer, spec.learning_rate, spec.lr_schedule) == ("sgd", 0.2, "one_cycle")
    assert (spec.epochs, spec.batch_size, spec.label_smoothing) == (10, 128, 0.2)
    assert spec.augmentation.enabled and spec.augmentation.width_shift == 0.0625
    assert spec.lookahead and spec.augmentation.alternating_flip
    assert spec.augmentation.whole_pixel_shifts
    assert spec.test_time_augmentation == "flip_and_shifts"
    assert isinstance(spec.hyperparameters, WhitenedCnnHyperparameters)
    # Empty: the widths follow the precision the layers compute in (next test).
    assert spec.hyperparameters.group_filters is None
    assert spec.hyperparameters.identity_init and spec.hyperparameters.bias_gradient_scale == 64
    assert not spec.hyperparameters.train_whitening_bias
    # Digits keep their orientation: no mirrored copies unless asked.
    digits = parse_training_spec({"dataset": "digits", "architecture": "whitened_cnn"})
    assert digits.test_time_augmentation == "none"


@pytest.mark.parametrize(("bfloat16", "widths"), [(True, [64, 256, 256]), (False, [64, 192, 256])])
def test_whitened_cnn_default_widths_follow_the_precision(
    bfloat16: bool, widths: list[int]
) -> None:
    hyperparameters = WhitenedCnnHyperparameters(bfloat16=bfloat16)
    model = build_model("whitened_cnn", hyperparameters, CIFAR10, 10)
    assert model_widths(model) == widths
    # Given widths are kept in either precision.
    given = WhitenedCnnHyperparameters(bfloat16=bfloat16, group_filters=[16, 32])
    assert model_widths(build_model("whitened_cnn", given, CIFAR10, 10)) == [16, 32]
    # The cost estimate, made without TensorFlow, follows the precision the spec names.
    built_widths = WhitenedCnnHyperparameters(group_filters=widths)
    assert estimate_cost("whitened_cnn", hyperparameters, CIFAR10, 10) == estimate_cost(
        "whitened_cnn", built_widths, CIFAR10, 10
    )


def model_widths(model: keras.Model) -> list[int]:
    convs = [layer for layer in model.layers if layer.name.endswith("_conv2")]
    return [layer.filters for layer in convs]


def test_whitened_cnn_starts_with_a_whitening_layer_fitted_by_adapt() -> None:
    definition = ARCHITECTURES["whitened_cnn"]
    model = build_model("whitened_cnn", definition.hyperparameters(), MNIST, 10)
    assert model.layers[1].__class__.__name__ == "PatchWhitening"
    assert definition.adapt is not None
    images = np.random.default_rng(0).random((20, *MNIST), dtype=np.float32)
    definition.adapt(model, images)
    whitening = model.get_layer("whitening")
    assert whitening.mean.numpy() == pytest.approx(images.mean(), rel=1e-4)
    # The other architectures learn everything from training.
    others = [name for name in ARCHITECTURES if name != "whitened_cnn"]
    assert all(ARCHITECTURES[name].adapt is None for name in others)


@pytest.mark.parametrize(
    ("architecture", "hyperparameters"),
    [
        ("custom_cnn", {"batch_norm": True}),
        ("alexnet", {"batch_norm": True}),
        ("resnet", {}),
        ("resnet_small", {}),
        ("whitened_cnn", {}),
    ],
)
def test_batch_norms_train_through_the_fused_kernel(
    architecture: str, hyperparameters: dict[str, object]
) -> None:
    typed = ARCHITECTURES[architecture].hyperparameters.model_validate(hyperparameters)
    model = build_model(architecture, typed, CIFAR10, 10)
    norms = [layer for layer in model.layers if "BatchNormalization" in type(layer).__name__]
    assert norms, "the recipe's network normalizes its batches"
    assert {type(layer).__name__ for layer in norms} == {"FusedBatchNormalization"}


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_whitened_cnn_activation_is_a_hyperparameter(activation: str) -> None:
    hyperparameters = WhitenedCnnHyperparameters(activation=activation)
    model = build_model("whitened_cnn", hyperparameters, CIFAR10, 10)
    activations = [layer for layer in model.layers if type(layer).__name__ == "Activation"]
    hidden = [layer for layer in activations if layer.name != "probabilities"]
    assert len(hidden) == 7  # after the whitening and after each of the six batch norms
    assert {layer.get_config()["activation"] for layer in hidden} == {activation}


@pytest.mark.parametrize(
    ("architecture", "first_layer"),
    [
        ("custom_cnn", "conv1"),
        ("alexnet", "conv1"),
        ("resnet", "stem"),
        ("resnet_small", "stem"),
        ("whitened_cnn", "whitening"),
    ],
)
def test_bfloat16_switch_sets_the_compute_dtype_but_keeps_float32_output(
    architecture: str, first_layer: str
) -> None:
    hyperparameters = ARCHITECTURES[architecture].hyperparameters
    # whitened_cnn's default widths follow the precision (tested above): fix them here.
    widths = {"group_filters": [16, 32]} if architecture == "whitened_cnn" else {}
    on = build_model(architecture, hyperparameters(bfloat16=True, **widths), CIFAR10, 10)
    off = build_model(architecture, hyperparameters(bfloat16=False, **widths), CIFAR10, 10)
    assert on.get_layer(first_layer).compute_dtype == "bfloat16"
    assert off.get_layer(first_layer).compute_dtype == "float32"
    assert on.output.dtype == off.output.dtype == "float32"
    assert on.count_params() == off.count_params()


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_by_default_exactly_where_it_trains_faster(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "bfloat16_trains_faster", lambda: native)
    model = build_model("custom_cnn", CustomCnnHyperparameters(), CIFAR10, 10)
    assert model.get_layer("conv1").compute_dtype == ("bfloat16" if native else "float32")


@pytest.mark.parametrize("input_shape", [CIFAR10, MNIST])
@pytest.mark.parametrize(
    ("architecture", "hyperparameters"),
    [
        ("custom_cnn", {}),
        ("custom_cnn", {"kernel_size": 5, "dropout_rate": 0.4}),
        ("custom_cnn", {"extra_conv_filters": [96], "batch_norm": True}),
        ("alexnet", {}),
        ("alexnet", {"batch_norm": True}),
        ("resnet", {}),
        ("resnet", {"stage_filters": [16, 32], "residual_stages": [False, True]}),
        ("resnet_small", {}),
        # Its default widths depend on the precision: named here, so that the count
        # is exact on any CPU (unnamed, the estimate bounds the build: below).
        ("whitened_cnn", {"bfloat16": True}),
        ("whitened_cnn", {"bfloat16": False}),
        ("whitened_cnn", {"group_filters": [16, 32]}),
    ],
)
def test_cost_estimate_counts_parameters_exactly_without_building(
    architecture: str, hyperparameters: dict[str, object], input_shape: tuple[int, int, int]
) -> None:
    definition = ARCHITECTURES[architecture]
    typed = definition.hyperparameters.model_validate(hyperparameters)
    cost = estimate_cost(architecture, typed, input_shape, 10)
    model = build_model(architecture, typed, input_shape, 10)
    assert cost.parameters == model.count_params()
    # Every weight is used at least once per image, multiply and add.
    assert cost.flops_per_image >= 2 * cost.parameters
    assert cost.activations_per_image > 0


def test_cost_grows_with_width_and_images() -> None:
    definition = ARCHITECTURES["custom_cnn"]
    narrow = definition.estimate_cost(definition.hyperparameters(), CIFAR10, 10)
    wide = definition.estimate_cost(
        definition.hyperparameters.model_validate({"filters1": 64, "filters2": 128}), CIFAR10, 10
    )
    assert wide.flops_per_image > 2 * narrow.flops_per_image
    assert narrow.training_flops(images=100, epochs=2) == 2 * narrow.training_flops(100, 1)
    assert narrow.activation_bytes(batch_size=64) == 2 * narrow.activation_bytes(32)


def test_whitened_cnn_cost_without_a_named_precision_bounds_the_build_on_any_cpu() -> None:
    # The API estimates without TensorFlow, so without the machine's precision: it
    # counts bfloat16's wider default groups, which a float32 machine builds narrower.
    typed = ARCHITECTURES["whitened_cnn"].hyperparameters.model_validate({})
    wider = ARCHITECTURES["whitened_cnn"].hyperparameters.model_validate({"bfloat16": True})
    narrower = ARCHITECTURES["whitened_cnn"].hyperparameters.model_validate({"bfloat16": False})

    cost = estimate_cost("whitened_cnn", typed, CIFAR10, 10)

    assert cost == estimate_cost("whitened_cnn", wider, CIFAR10, 10)
    assert cost.parameters > estimate_cost("whitened_cnn", narrower, CIFAR10, 10).parameters
    assert cost.parameters >= build_model("whitened_cnn", typed, CIFAR10, 10).count_params()
