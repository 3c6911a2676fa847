"""Prometheus metrics, exposed on ``GET /metrics``.

Labels never carry channel names (unbounded cardinality). Counters on the per-message path are
incremented once per batch, not once per delivery.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTIONS = Gauge("relay_connections", "Open WebSocket connections.", ["role"])
PUBLISHED = Counter("relay_messages_published_total", "Messages stored in Redis and acknowledged.")
DELIVERED = Counter(
    "relay_messages_delivered_total", "Frames written to consumer connections (messages, and gaps)."
)
ERRORS = Counter("relay_errors_total", "Error replies and refusals sent to clients.", ["code"])
SLOW_CONSUMER_EVENTS = Counter(
    "relay_slow_consumer_events_total", "Times a consumer's buffer overflowed and it fell back to Redis."
)
GAPS = Counter("relay_gaps_total", "Gap frames sent: messages retention removed before a consumer got them.")
REDIS_ERRORS = Counter("relay_redis_errors_total", "Redis operations that failed.", ["operation"])
TOPICS = Gauge("relay_channels_followed", "Channels this instance follows for its local consumers.")
BUFFERED = Gauge(
    "relay_consumer_buffered_messages",
    "Live messages held for consumers, summed over connections (read at scrape).",
)
DRAINING = Gauge("relay_draining", "1 while the instance drains before stopping.")
