"""Request and response bodies of /predict and the TensorFlow Serving routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.images import PixelRange
from service.schemas import MODEL_NAME_DOC, VERSION_DOC
from trainer.spec_base import MAX_VERSION

# TF Serving's one signature; every architecture's model answers it.
SIGNATURE_NAME = "serving_default"
# Classes ranked per prediction when a request does not say.
DEFAULT_TOP_K = 3


class PredictQuery(BaseModel):
    """Query parameters of /predict (read by service/query.py, not by FastAPI)."""

    model_name: str = Field(**MODEL_NAME_DOC)
    version: str | None = Field(None, **VERSION_DOC)
    top_k: int | None = Field(
        None,
        ge=1,
        description="Classes ranked per prediction, 1 to the number of classes "
        f"(default {DEFAULT_TOP_K}, or fewer if the model has fewer classes).",
    )


class PredictRequest(BaseModel):
    """JSON body of /predict."""

    model_config = ConfigDict(extra="forbid")

    instances: list[Any] = Field(
        min_length=1,
        description='Each instance is `{"b64": "<base64 of a PNG/JPEG/BMP/GIF file>"}` or a '
        "pixel array of the model's input shape [H, W, C] (or [H, W] for one channel).",
    )
    pixel_range: PixelRange = Field(
        "0-255", description="Value range of pixel arrays; ignored for b64 images."
    )


class LabelProbability(BaseModel):
    label: str = Field(examples=["cat"])
    probability: float = Field(examples=[0.91])


class Prediction(BaseModel):
    label: str = Field(description="The most probable class.", examples=["cat"])
    class_index: int = Field(description="Index of `label` in the model's class_names.")
    confidence: float = Field(description="Probability of `label`.", examples=[0.91])
    top_k: list[LabelProbability] = Field(description="The k most probable classes, best first.")
    filename: str | None = Field(None, description="The uploaded file's name (uploads only).")


class PredictResponse(BaseModel):
    model_name: str
    version: int
    predictions: list[Prediction]


class TfServingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signature_name: str | None = Field(
        None, max_length=64, description=f"Only {SIGNATURE_NAME!r} exists."
    )
    instances: list[Any] | None = Field(None, description="Row format: one input per item.")
    inputs: Any = Field(None, description="Columnar format: the batch, or {input name: batch}.")


class TfServingModelPath(BaseModel):
    """The path of a TF Serving predict route, read in the endpoint (service/query.py)."""

    model_name: str = Field(description="Registered model name.")


class TfServingVersionPath(TfServingModelPath):
    version: int = Field(ge=1, le=MAX_VERSION, description="Version number.")


class TfServingLabelPath(TfServingModelPath):
    alias: str = Field(description="Alias (TF Serving's version label).", max_length=64)


class TfServingPredictResponse(BaseModel):
    predictions: list[list[float]] | None = Field(None, description="Row format answer.")
    outputs: list[list[float]] | None = Field(None, description="Columnar format answer.")


class StatusDetail(BaseModel):
    error_code: str = "OK"
    error_message: str = ""


class VersionStatus(BaseModel):
    version: str
    state: str = "AVAILABLE"
    status: StatusDetail = Field(default_factory=StatusDetail)


class ModelStatus(BaseModel):
    model_version_status: list[VersionStatus]
