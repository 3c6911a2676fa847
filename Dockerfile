# One relay instance. Build: docker build -t relay .   Run: docker compose up
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/relay
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN pip install . \
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
