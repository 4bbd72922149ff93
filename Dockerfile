# nexa gateway container image. Build:   docker build -t nexa-gateway .
#                                       docker build --build-arg WITH_IMAGE=1 -t nexa-gateway:image .
# The builder compiles the engines (llama-cpp-python, optionally stable-diffusion-cpp-python) once into
# wheels; the runtime image installs only wheels, runs as a non-root user and serves the manifest at
# /etc/nexa/nexa.yaml with the model cache in /var/cache/nexa (mount both). See docs/deploy.md.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY backends/ backends/
COPY gateway/ gateway/
ARG WITH_IMAGE=0
# CMAKE_ARGS selects a llama.cpp backend, e.g. --build-arg CMAKE_ARGS="-DGGML_CUDA=on" (with a CUDA base image).
ARG CMAKE_ARGS=""
ENV CMAKE_ARGS=${CMAKE_ARGS} CMAKE_BUILD_PARALLEL_LEVEL=4 PIP_DISABLE_PIP_VERSION_CHECK=1
# Every dependency as a wheel; the engines compile here, once (llama.cpp 4-5 min, stable-diffusion.cpp 2-3 min).
RUN if [ "$WITH_IMAGE" = "1" ]; then target=".[image]"; else target="."; fi \
 && pip wheel --wheel-dir /wheels "$target"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libgomp1: llama.cpp's OpenMP threads; libespeak-ng1 (with its data): the phonemizer of Piper voices
# (TTS models). Nothing else native is needed at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libespeak-ng1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/nexa nexa \
 && mkdir -p /etc/nexa /var/cache/nexa \
 && chown nexa:nexa /var/cache/nexa
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY --chown=root:root nexa.yaml.example /etc/nexa/nexa.yaml
# NEXA_HOST/NEXA_PORT win over the manifest's server section (and survive reloads, unlike --host).
ENV NEXA_HOST=0.0.0.0 \
    NEXA_PORT=8000 \
    NEXA_CACHE_ROOT=/var/cache/nexa \
    HF_HOME=/var/cache/nexa/huggingface \
    NEXA_LOG_FORMAT=json \
    GGML_NO_BACKTRACE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
USER nexa
WORKDIR /home/nexa
# Mount a folder (not a single file) at /etc/nexa so that edits reach the container and reload.
VOLUME ["/etc/nexa", "/var/cache/nexa"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('NEXA_PORT', '8000'), timeout=4)"]
# SIGTERM: stop accepting, finish in-flight requests (server.shutdown_grace_s), unload, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["nexa"]
CMD ["server", "-c", "/etc/nexa/nexa.yaml", "--offline"]
