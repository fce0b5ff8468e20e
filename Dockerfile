# HeadScope for GPU hosts. Build: docker build -t headscope .
# Run:   docker run --gpus all -p 8000:8000 -v headscope-cache:/app/models/cache headscope
# On a normal Linux host torch==2.13.0 from PyPI is the CUDA build, so the Makefile's pinned runtime install
# (`make runtime`: requirements.lock, no test or lint tools) gives a GPU-enabled image.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 curl=7.88.1-10+deb12u15 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 headscope

WORKDIR /app
COPY requirements.lock requirements-ray.lock Makefile ./
# The runtime half of what `make env` installs on a developer machine, from the same locks and recipe, with
# the Ray extra: the same image serves the app and runs as the nodes of a Ray cluster (README, "Run on a cluster").
RUN make runtime ray PYTHON=python3

COPY app ./app
COPY static ./static
COPY templates ./templates
COPY models/registry.toml models/README.md ./models/
RUN mkdir -p models/cache && chown -R headscope:headscope /app/models

USER 10001
# Prepared weights live here: mount a volume so the one-time GGUF dequantization survives restarts.
VOLUME ["/app/models/cache"]

# Inside the container the server must listen on every interface; outside it the default stays 127.0.0.1.
ENV HEADSCOPE_HOST=0.0.0.0 \
    HEADSCOPE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/api/health"]

CMD [".venv/bin/python", "-m", "app", "serve"]
