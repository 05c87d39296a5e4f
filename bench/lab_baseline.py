"""The lab's best custom CNN (the "64/128/256 variation") on 25% of CIFAR-10, as the lab ran it.

Conv(64) → MaxPool → Conv(128) → MaxPool → Dropout(0.25) → Dense(256) → Dropout(0.25),
30 epochs, batch size 64, Adam at a constant 1e-3, no augmentation.

    .venv/bin/python -m bench.lab_baseline [--data-dir DIR] [--registry-dir DIR]
"""

from __future__ import annotations

from bench.harness import run_benchmark
from trainer.architectures.custom_cnn import CustomCnnHyperparameters, CustomCnnSpec

SPEC = CustomCnnSpec(
    dataset="cifar10",
    sample_fraction=0.25,
    seed=42,
    epochs=30,
    batch_size=64,
    learning_rate=1e-3,
    optimizer="adam",
    lr_schedule="constant",
    hyperparameters=CustomCnnHyperparameters(filters1=64, filters2=128, dense_units=256),
    model_name="bench-lab-baseline",
)

if __name__ == "__main__":
    run_benchmark("lab-baseline", "Lab baseline: custom_cnn 64/128/256, 30 epochs", SPEC)
