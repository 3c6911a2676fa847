"""Processes that run beside the relay instances, one module per worker: ``janitor`` (keeps Redis
tidy, one at a time), ``runner`` (calls your function for each message of a consumer group), and
``example`` (a handler for the runner). They use the broker, the fan-out and the groups, never the
server: a worker loads no uvicorn."""
