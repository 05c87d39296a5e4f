"""Contender (a) of the serving benchmark: /predict as most tutorials ship it.

One uvicorn process, the upload decoded with Pillow and ``model.predict`` called
once per request, on the event loop. Run by ``bench/serve.py``:

    BENCH_MODEL=model.keras .venv/bin/uvicorn bench.serve_naive:app --port 8101
"""

from __future__ import annotations

import io
import os
from typing import Any

import keras
import numpy as np
from fastapi import FastAPI, UploadFile
from PIL import Image

CLASS_NAMES = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()  # noqa: SIM905
)

model = keras.saving.load_model(os.environ["BENCH_MODEL"], compile=False)
app = FastAPI()


@app.post("/predict")
async def predict(files: UploadFile) -> dict[str, Any]:
    """Classify one uploaded image."""
    image = Image.open(io.BytesIO(await files.read())).convert("RGB").resize((32, 32))
    pixels = np.asarray(image, dtype=np.float32)[np.newaxis] / 255.0
    probabilities = model.predict(pixels, verbose=0)[0]
    best = int(np.argmax(probabilities))
    return {"label": CLASS_NAMES[best], "confidence": float(probabilities[best])}
