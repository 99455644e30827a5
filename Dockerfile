# syntax=docker/dockerfile:1
# Unseen, CPU image: `unseen serve` on the classical backends (the neural ones run too, slowly, when
# their weights are mounted at /weights).
#
#   docker build -t unseen:cpu .
#   docker run --rm -p 8080:8080 -e UNSEEN_SECURITY__TOKEN="$(openssl rand -hex 24)" unseen:cpu
#
# No Debian FFmpeg: the PyAV wheels carry their own FFmpeg libraries, and opencv-python-headless
# needs no GUI libraries.  torch/torchvision are the CPU-only wheels from PyTorch's CPU index
# (download.pytorch.org/whl/cpu, about 200 MB); PyPI's default Linux torch wheel would pull in the
# CUDA libraries (several GB) that this image never uses.  Dockerfile.cuda is the GPU image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UNSEEN_WEIGHTS=/weights

WORKDIR /src

# torch first, from the CPU index, so `pip install .` finds its requirement met
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.1" "torchvision>=0.16"

COPY pyproject.toml README.md ./
COPY engine ./engine
COPY server ./server
COPY client ./client
COPY weights ./weights
COPY benchmarks ./benchmarks
RUN pip install . && rm -rf /src/build

# a non-root user; /weights (the weights folder: mount checkpoints here) and /data (recordings)
RUN useradd --create-home --uid 10001 --user-group unseen \
    && mkdir -p /weights /data \
    && chown unseen:unseen /weights /data
USER 10001:10001
WORKDIR /data

EXPOSE 8080

# /healthz/live is open without the token; 127.0.0.1 is always an allowed Host.  python, since the
# slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz/live' % os.environ.get('UNSEEN_PORT', '8080'), timeout=4)"]

# Beyond loopback `unseen serve` refuses to start without a token: pass UNSEEN_SECURITY__TOKEN
# (and the streams: UNSEEN_SOURCES, UNSEEN_OUTPUTS__<NAME>__PUBLISH, or --config FILE).
# SIGTERM drains within 10 s (stop intake, finish the step, flush, close recordings), exit 0.
STOPSIGNAL SIGTERM
CMD ["unseen", "serve", "--host", "0.0.0.0"]
