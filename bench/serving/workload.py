"""What the serving benchmark serves and sends: the model, and real CIFAR-10 PNG bodies."""

from __future__ import annotations

import base64
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_NAME = "bench-serving"
MODELS_LOADED_FOR_MEMORY = 4
BATCH_IMAGES = 64
CONCURRENCY = 32
IDLE_REQUESTS = 300
# Requests one at a time before each of ours' idle runs, not timed.
IDLE_WARM_UP_REQUESTS = 100


def prepare_model(cache_dir: Path, data_dir: Path) -> Path:
    """The registry holding the custom CNN, trained once and kept in ``cache_dir``.

    Four versions of the same file are registered, for the memory figure with four
    models loaded.
    """
    from trainer.architectures.custom_cnn import CustomCnnSpec
    from trainer.card import TrainingRecord
    from trainer.registry import FileModelRegistry
    from trainer.run import train_and_register

    registry_dir = cache_dir / "registry"
    registry = FileModelRegistry(registry_dir)
    if not (registry_dir / MODEL_NAME).is_dir():
        # The lab's custom CNN (32/64/128, 3×3, dropout 0.25), briefly: speed is the point.
        spec = CustomCnnSpec(
            dataset="cifar10", sample_fraction=0.1, epochs=2, seed=42, model_name=MODEL_NAME
        )
        print(f"training {spec.model_dump_json()}", flush=True)
        train_and_register(spec, data_dir=data_dir, registry=registry)
    versions = registry.versions(MODEL_NAME)
    card = registry.get_card(MODEL_NAME, versions[0])
    record = TrainingRecord.model_validate(
        card.model_dump(mode="json", include=set(TrainingRecord.model_fields))
    )
    source = registry.model_path(MODEL_NAME, versions[0])
    for _ in range(MODELS_LOADED_FOR_MEMORY - len(versions)):
        registry.register(MODEL_NAME, lambda path: shutil.copyfile(source, path), record)
    return registry_dir


def model_file(registry_dir: Path) -> Path:
    from trainer.registry import FileModelRegistry

    return FileModelRegistry(registry_dir).model_path(MODEL_NAME, 1)


@dataclass(frozen=True)
class Bodies:
    """Request bodies on disk, as hey sends them."""

    single_png: Path  # a multipart form with one 32×32 PNG in the field "files"
    batch_json: Path  # {"instances": [{"b64": PNG}, ...]} with BATCH_IMAGES images
    boundary: str
    png_bytes: int
    images: Path  # the test images as float32 in [0, 1], for the raw limit


def prepare_bodies(cache_dir: Path, data_dir: Path) -> Bodies:
    """The first CIFAR-10 test images as PNG files in request bodies."""
    from PIL import Image

    with np.load(data_dir / "cifar10.npz") as data:
        test_images = data["x_test"][:256]
    pngs = []
    for pixels in test_images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    boundary = "daciavisionbenchboundary"
    single = cache_dir / "single.multipart"
    single.write_bytes(
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="0.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + pngs[0]
        + f"\r\n--{boundary}--\r\n".encode()
    )
    batch = cache_dir / f"batch{BATCH_IMAGES}.json"
    instances = [{"b64": base64.b64encode(png).decode()} for png in pngs[:BATCH_IMAGES]]
    batch.write_text(json.dumps({"instances": instances}))
    images = cache_dir / "images.npy"
    np.save(images, test_images.astype(np.float32) / 255.0)
    return Bodies(single, batch, boundary, len(pngs[0]), images)
