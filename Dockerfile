# One relay instance. Build: docker build -t relay .   Run: docker compose up -d --build
#
# PYTHON_IMAGE is the base (python:3.11-slim). Wheels put in deploy/wheelhouse/ are installed from
# there, and with PIP_NO_INDEX=1 only from there: a build that reaches no package index
# (docs/operating.md, "Building without a registry").
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/relay
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY deploy/wheelhouse /tmp/wheelhouse
ARG PIP_NO_INDEX=0
RUN pip install --find-links /tmp/wheelhouse . \
    && rm -rf /tmp/wheelhouse \
    && useradd --system --uid 10001 --no-create-home relay

USER relay
ENV RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8000
EXPOSE 8000

HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

# relay serve drains on SIGTERM: /readyz turns 503, consumers get 1012, exit within a few seconds
STOPSIGNAL SIGTERM
CMD ["relay", "serve"]
