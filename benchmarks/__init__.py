"""A benchmark for the relay: fan-out, ingest, idle connections, many channels and resume storms,
against any deployment (``--url``) or local instances, beside two baselines. ``python -m benchmarks -h``."""
