"""Prometheus metrics, exposed on ``GET /metrics``.

Labels never carry channel names (unbounded cardinality). Counters on the per-message path are
incremented once per batch, not once per delivery.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
SUBSCRIPTIONS = Gauge("relay_subscriptions", "Channels followed by /ws connections (one per subscription).")
TOPICS = Gauge("relay_channels_followed", "Channels this instance follows for its local consumers.")
BUFFERED = Gauge(
    "relay_consumer_buffered_messages",
    "Live messages held for consumers, summed over connections (read at scrape).",
)
DRAINING = Gauge("relay_draining", "1 while the instance drains before stopping.")
REFUSED_FULL = Counter(
    "relay_connections_refused_full_total", "Handshakes refused: RELAY_MAX_CONNECTIONS reached."
)
HTTP_REFUSED = Counter(
    "relay_http_refused_total",
    "Requests and handshakes refused before the application: heads too large or too slow.",
    ["code"],
)
RESETS = Counter(
    "relay_connections_reset_total",
    "WebSocket connections dropped unflushed: the client stopped reading or answering.",
    ["reason"],
)
IDLE_CLOSES = Counter("relay_idle_closes_total", "Producers closed after RELAY_PRODUCER_IDLE_TIMEOUT.")
RATE_LIMITED = Counter("relay_rate_limited_total", "Producer frames refused over RELAY_PUBLISH_RATE.")
ACKED = Counter("relay_messages_acked_total", "Group messages acknowledged by members (recorded in Redis).")
DEAD_LETTERED = Counter("relay_messages_dead_lettered_total", "Group messages moved to the dead letters.")
GROUP_HELD = Gauge(
    "relay_group_held_messages",
    "Messages group members on this instance hold unacknowledged (read at scrape).",
)
FANOUT_LATENCY = Histogram(
    "relay_fanout_latency_seconds",
    "From the entry's creation in Redis to its fan-out on this instance (one sample per message).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REDIS_LATENCY = Histogram(
    "relay_redis_command_seconds",
    "Round trips to Redis, by operation (a pipeline or script counts once).",
    ["operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5),
)
