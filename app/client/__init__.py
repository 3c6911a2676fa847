"""A client for the relay: consume with automatic resume, publish without duplicates.

::

    from app.client import Consumer, Producer, Message, Gap

    async for event in Consumer("http://127.0.0.1:8080", "orders", from_="0"):
        if isinstance(event, Gap):
            ...  # retention removed messages you had not received: say so, resync, ...
        else:
            print(event.id, event.data)

    async with Producer("http://127.0.0.1:8080", "orders") as producer:
        entry_id = await producer.publish({"order": 17})

    async with Relay("http://127.0.0.1:8080") as relay:  # one socket, many channels
        orders = await relay.subscribe("orders", from_="0")
        entry_id = await relay.publish("invoices", {"order": 17})
        async for event in orders:  # Message | Gap | Join | Leave
            ...

:class:`Consumer` (:mod:`app.client.consumer`) reconnects and resumes after the last message it
yielded; :class:`Producer` (:mod:`app.client.producer`) posts each message with an idempotency
key, so a retried one is stored once; :class:`Relay` (:mod:`app.client.multiplex`) does both for
any number of channels over one ``/ws`` connection. ``relay publish``, ``relay tail``,
``relay presence`` and ``relay channels`` (:mod:`app.client.commands`) are built on them. The client knows the relay only through
:mod:`app.protocol`, as any other client would.
"""

from app.client.consumer import MAX_FRAME, Consumer, Gap, Message
from app.client.errors import ClientError, NotStored, Refused, Unreachable
from app.client.multiplex import Join, Leave, Relay, Subscription
from app.client.producer import Producer
from app.client.urls import http_url, websocket_url
from app.protocol.codes import RETRY_CLOSES as RETRY_CLOSE_CODES
from app.protocol.codes import RETRY_STATUSES

__all__ = [
    "MAX_FRAME",
    "RETRY_CLOSE_CODES",
    "RETRY_STATUSES",
    "ClientError",
    "Consumer",
    "Gap",
    "Join",
    "Leave",
    "Message",
    "NotStored",
    "Producer",
    "Refused",
    "Relay",
    "Subscription",
    "Unreachable",
    "http_url",
    "websocket_url",
]
