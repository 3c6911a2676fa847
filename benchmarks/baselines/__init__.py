"""Two small FastAPI apps the relay is compared with, each run with uvicorn (``benchmarks.servers``).

Both serve ``/ws/producer/{channel}`` (one reply frame per message), ``/ws/consumer/{channel}``
(each frame is a payload, as the producer sent it) and ``/readyz``.
"""
