"""DaciaVision HTTP service: FastAPI routes over the registry and the job queue."""

__version__ = "0.1.0"
