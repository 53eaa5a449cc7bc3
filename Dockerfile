# syntax=docker/dockerfile:1
# One image for every edgetune process: API server, worker, Ray node, Optuna dashboard, device
# agent; the container's command chooses. CPU only. docker-compose.yml runs the whole stack.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    EDGETUNE_DATA_DIR=/data

# torch first, and from PyTorch's CPU wheel index (for this one package only): from the default
# index, torch==2.13.0 is the CUDA build and pulls several GB of CUDA libraries. The package's
# own pin, torch==2.13.0, is then met by the installed 2.13.0+cpu and left alone. Its own layer,
# so that a change to edgetune's code does not download torch again.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# The package with the extras a deployment needs: PostgreSQL driver, Ray Tune, ONNX export and
# onnxruntime. Installed from a copy of the source that is removed after: the running code is
# the installed package, not a checkout beside it.
COPY pyproject.toml README.md /src/
COPY edgetune /src/edgetune
RUN pip install "/src[postgres,ray,onnx]" \
 && rm -rf /src \
 && python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"

COPY docker/healthcheck.py /usr/local/bin/edgetune-healthcheck

# A user of its own, never root. /data (SQLite, artifacts, datasets, Ray Tune's storage) is
# created here, owned by that user, so that a named volume mounted there starts writable.
RUN chmod 0755 /usr/local/bin/edgetune-healthcheck \
 && groupadd --gid 10001 edgetune \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin edgetune \
 && mkdir -p /data \
 && chown edgetune:edgetune /data
USER 10001:10001
WORKDIR /data

EXPOSE 8000 8080

# For the default command, the API; docker-compose.yml sets a check (or none) for each service.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["edgetune-healthcheck", "http", "http://127.0.0.1:8000/api/v1/health"]

# Alone, the image is a single-machine server (SQLite under /data, one worker). It listens on
# all interfaces, which edgetune allows only with authentication on: set EDGETUNE_ADMIN_TOKEN.
CMD ["edgetune", "serve", "--host", "0.0.0.0", "--port", "8000"]
