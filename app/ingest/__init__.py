"""Ingest: what a message goes through between a producer and Redis.

- :mod:`~app.ingest.checks`: the checks a message passes first (its size, its idempotency key's
  form, its producer's rate), shared by every way to publish;
- :mod:`~app.ingest.publisher`: the publishes of every producer of the instance, coalesced into
  pipelined batches; a message is acknowledged only once Redis has it.
"""
