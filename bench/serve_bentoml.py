"""Contender (b) of the serving benchmark: BentoML with adaptive batching on.

Runs in its own virtual environment (``bench/.venv-bentoml``, which
``bench/serve.py`` creates), with the same TensorFlow and Keras as the project:

    BENCH_MODEL=model.keras bench/.venv-bentoml/bin/bentoml serve serve_bentoml:Classifier \
        --working-dir bench --port 8102

The API is batchable: BentoML's dispatcher gathers concurrent requests (one image
each) into one call of up to 64 images, and the model runs through Keras'
compiled ``predict_on_batch``, the fastest call Keras offers.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
from PIL.Image import Image

CLASS_NAMES = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()  # noqa: SIM905
)


# No access log: ours and the naive app run without one, and a log line per request
# costs a server its time on two cores.
@bentoml.service(
    workers=1,
    traffic={"concurrency": 256, "timeout": 60},
    logging={"access": {"enabled": False}},
)
class Classifier:
    def __init__(self) -> None:
        import keras

        self.model = keras.saving.load_model(os.environ["BENCH_MODEL"], compile=False)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=1000)
    def predict(self, files: list[Image]) -> list[dict[str, Any]]:
        """Classify images; concurrent requests arrive here as one list."""
        pixels = np.stack(
            [np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32) for image in files]
        )
        probabilities = np.asarray(self.model.predict_on_batch(pixels / 255.0))
        answers = []
        for row in probabilities:
            best = int(np.argmax(row))
            answers.append({"label": CLASS_NAMES[best], "confidence": float(row[best])})
        return answers
