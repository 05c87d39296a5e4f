# DaciaVision: one image for the API (`daciavision serve`) and the training
# workers (`daciavision worker`). docker-compose.yml runs it with Redis;
# docs/deployment.md explains volumes, scaling and settings.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    DACIAVISION_HOME=/var/lib/daciavision

WORKDIR /app

# Dependencies first, read from pyproject.toml: TensorFlow is most of the
# image, and this layer is then rebuilt only when the dependencies change,
# not on every source edit.
COPY pyproject.toml README.md ./
RUN python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

COPY service ./service
COPY worker ./worker
COPY trainer ./trainer
RUN pip install --no-deps . && rm -rf build *.egg-info
# numba compiles the PNG decoder (about 10 s) into its cache now, so a container
# starts in seconds; on a CPU unlike the build machine's it compiles again. numba
# uses a cache folder only if it can write there, hence one of its own, owned below
# by the service's user (site-packages is not).
ENV NUMBA_CACHE_DIR=/var/cache/daciavision/numba
RUN python -c "from service import png_kernel; png_kernel.warm_up()"

# A non-root user owns the state directory. Creating it here (rather than
# letting the volume mount create it) gives a fresh named volume the same
# owner, so the service can write to it.
RUN groupadd --system --gid 10001 daciavision \
    && useradd --system --uid 10001 --gid daciavision \
       --home-dir /var/lib/daciavision --shell /usr/sbin/nologin daciavision \
    && mkdir -p /var/lib/daciavision/registry /data \
    && chown -R daciavision:daciavision /var/lib/daciavision /var/cache/daciavision
USER daciavision
WORKDIR /var/lib/daciavision

# Jobs (embedded mode), the broker (embedded mode) and the model registry.
VOLUME ["/var/lib/daciavision"]
EXPOSE 8000

# curl is not in the slim image; Python's urllib is. Any non-2xx answer or
# connection error makes urlopen raise, hence a non-zero exit.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4)"]

# Exec form: the process gets SIGTERM directly and shuts down cleanly.
# Without REDIS_URL this is embedded mode (API plus one local worker).
CMD ["daciavision", "serve", "--host", "0.0.0.0", "--port", "8000"]
