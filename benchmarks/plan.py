"""What the parent asks of one load-generator process, and the line protocol between them.

The parent writes the plan as the first line of the worker's standard input, then commands, one a
line; the worker writes events to its standard output, one JSON object a line:

=========================  ==================================================================
worker → parent            when
=========================  ==================================================================
``producers``              (``producers_first`` only) its producers are connected; it waits for ``CONNECT``
``ready``                  its initial consumers and every producer are connected (or failed)
``progress``               every ``progress_s`` (every 0.1 s once ``EXPECT`` arrived)
``produced``               its producers have finished and their acks are in (or timed out)
``result``                 after ``FINISH`` (or at the hard deadline): every figure it has
=========================  ==================================================================

Commands: ``CONNECT`` (``producers_first`` only: connect the consumers now), ``GO`` (start producing; deferred consumer groups connect after their delay),
``STOP`` (stop producing now), ``EXPECT <json>`` (what each channel should have delivered:
``{channel: {"last": seq, "errored": [seq, ...]}}``), ``FINISH`` (report and exit). A worker whose
standard input closes exits at once; one that reaches ``deadline_s`` reports and exits by itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

PAYLOAD = b'{"seq":%d,"ts":%.3f,"pad":"%s"}'  # % (seq, wall-clock ms, padding): about 100 bytes

CONNECT = "CONNECT"
GO = "GO"
STOP = "STOP"
EXPECT = "EXPECT"
FINISH = "FINISH"


@dataclass(frozen=True)
class GroupPlan:
    """Consumers measured together (e.g. "live" and "storm" in resume-storm)."""

    name: str
    consumers: list[tuple[str, str]]  # (url, channel) per subscription
    first_seq: int = 0  # the first seq each consumer must receive
    connect_after_s: float | None = None  # None: before ``ready``; else this long after ``GO``
    concurrency: int = 128  # handshakes in flight at once
    # 0: each consumer is a connection of its own (``/ws/consumer/C``); N: each run of N consecutive
    # consumers (one URL: ``/ws``) is one connection, subscribing to each one's channel
    multiplex: int = 0


@dataclass(frozen=True)
class ProducerPlan:
    """One producer connection publishing ``{"seq","ts","pad"}`` payloads to one channel."""

    url: str
    channel: str
    rate: float = 0.0  # messages per second; 0: as fast as acks allow, ``window`` in flight
    window: int = 1000  # most messages unanswered; at a fixed rate, beyond it a send is skipped
    duration_s: float = 10.0
    first_seq: int = 0
    phase_s: float = 0.0  # delay before the first message (spreads many slow producers)


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    relay_frames: bool  # consumers get relay frames (subscribed/message/gap), else bare payloads
    groups: list[GroupPlan] = field(default_factory=list)
    producers: list[ProducerPlan] = field(default_factory=list)
    deadline_s: float = 120.0  # hard bound on the worker's life
    connect_timeout_s: float = 30.0
    ack_timeout_s: float = 5.0
    progress_s: float = 1.0
    pad: int = 54  # payload padding: about 100 bytes in all
    producers_first: bool = False  # connect the producers, report ``producers``, consumers on ``CONNECT``

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: bytes) -> WorkerPlan:
        raw: dict[str, Any] = orjson.loads(text)
        groups = [
            GroupPlan(**{**g, "consumers": [(url, ch) for url, ch in g["consumers"]]}) for g in raw["groups"]
        ]
        producers = [ProducerPlan(**p) for p in raw["producers"]]
        return cls(**{**raw, "groups": groups, "producers": producers})
