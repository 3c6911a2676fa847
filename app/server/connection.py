"""One WebSocket connection, whatever its kind: what producers, consumers and members share.

::

    run(first frame)
      accept, count, log "open" ─▶ start reading ─▶ first frame ─▶ write() until closing ─▶ close frame
      at the end, always: stop reading and timers, uncount, log "closed by relay|client"

A kind of connection (a subclass) says what it does with each client frame (:meth:`on_frame`,
never blocking) and how it writes (:meth:`write`: it runs in the handler task and returns once
``closing``, having sent what the kind owes first). The rest is here:

- **reading**: a reader task takes the client's frames and hands them to ``on_frame``. On a wire
  (``app.server.wire``), a kind that is mostly idle (``reads_on_arrival``) gets that task only
  while frames wait in its inbox, so an idle connection costs one task; a busy kind (producers)
  and every connection without a wire keep one reader loop for the connection's life.
  :meth:`reading_held` may hold the reader back (until :meth:`ready_to_read` returns): uvicorn then
  stops reading the socket, and TCP pushes back on the client;
- **replies**, in order: :meth:`reply` (a text), :meth:`reply_later` (a future, rendered once it
  is done: a publish's ack), :meth:`refuse` (an error for a bad frame) and :meth:`report` (an
  error that is not the client's doing); :meth:`send_replies` sends those at the head that are
  ready, together, in one write on a wire;
- **the flood rule**: more than 32 frames refused within 10 s close the connection with 1008;
- **token expiry**: 4401 when the token's ``exp`` passes;
- **closing**: :meth:`request_close` (drain, expiry, flood, a frame too big) lets ``write`` wind
  down, then sends the close frame; a client that leaves stops everything at once, and no close
  frame is sent;
- **metrics** (``relay_connections{role}``) and the connection's log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Final

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import metrics
from app.logs import ConnectionLog
from app.protocol import frames
from app.protocol.codes import Close, ErrorCode
from app.server.outlet import Outlet, outlet_of
from app.server.websocket import CLOSED_BY_RELAY
from app.server.wire import Inbox, Wire
from app.wakeup import Wakeup

Render = Callable[["asyncio.Future[Any]"], str]
Reply = str | tuple["asyncio.Future[Any]", Render]
"""A reply's text, or a future and how to render it once done (kept in order with the rest)."""

log = logging.getLogger("relay.connections")

FLOOD_REASON: Final = "too many frames that could not be accepted; fix the client"
TOKEN_EXPIRED_REASON: Final = "token expired: reconnect with a new token"
_REPLY_BATCH: Final = 256  # replies per write


class FloodGuard:
    """Counts a client's bad frames: more than ``limit`` within ``seconds`` is a flood."""

    __slots__ = ("_seconds", "_times")

    def __init__(self, limit: int = 32, seconds: float = 10.0) -> None:
        self._times: deque[float] = deque(maxlen=limit)
        self._seconds = seconds

    def flooding(self) -> bool:
        """Record one bad frame; True when this one is over the limit."""
        now = time.monotonic()
        full = len(self._times) == self._times.maxlen
        if full and now - self._times[0] < self._seconds:
            return True
        self._times.append(now)
        return False


def _forget_request(websocket: WebSocket) -> None:
    """Let go of the handshake's headers once it is accepted: every check that reads them (origin,
    token, query) ran before, and they weigh about 1 KB a connection for as long as it stays open
    (the scope's list of pairs, and Starlette's parsed headers and query kept on the socket)."""
    websocket.scope["headers"] = []
    cached = websocket.__dict__
    cached.pop("_headers", None)
    cached.pop("_query_params", None)


class Connection(ABC):
    role: ClassVar[str]
    """The label of ``relay_connections`` and of the log lines: producer, consumer, member."""
    reads_on_arrival: ClassVar[bool] = True
    """Take frames with a task made when they arrive (idle kinds), not with a lifelong loop."""
    replies_at_once: ClassVar[bool] = False
    """On a wire, a reply that becomes known is sent there and then, from its future's callback,
    when nothing is in its way, instead of waking the writer for it (busy kinds: producers)."""
    takes_at_once: ClassVar[bool] = False
    """On a wire, act on each frame in the protocol's own call as it arrives, while reading is not
    held (busy kinds whose ``on_frame`` is cheap: producers): no task switch, and no pause and
    resume of the socket's reading, per frame."""

    __slots__ = (
        "_client_code",
        "_close",
        "_closing",
        "_closing_waiter",
        "_expires",
        "_expiry",
        "_flood",
        "_gone",
        "_inbox",
        "_log",
        "_reader",
        "_replies",
        "_room",
        "_sending",
        "_watched",
        "channel",
        "out",
        "wake",
        "websocket",
    )

    def __init__(self, websocket: WebSocket, channel: str, *, expires: float | None = None) -> None:
        self.websocket = websocket
        self.channel = channel
        self.out: Outlet = outlet_of(websocket)
        self.wake = Wakeup()  # the writer waits on it: something to send, or closing
        self._expires = expires
        self._expiry: asyncio.TimerHandle | None = None
        self._client_code: int | None = None
        self._close: tuple[int, str] | None = None  # asked for by the relay
        self._closing = False
        self._gone = False
        self._log: ConnectionLog | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: Inbox | None = None
        # made when first needed: most connections never need them, and thousands sit idle
        self._replies: deque[Reply] | None = None
        self._room: Wakeup | None = None
        self._flood: FloodGuard | None = None
        self._closing_waiter: asyncio.Future[None] | None = None
        self._watched: asyncio.Future[Any] | None = None  # the pending first reply the writer waits on
        self._sending = True  # the writer has replies on their way (or has not started): none may pass them

    # -- what each kind says ---------------------------------------------------------------------

    @abstractmethod
    async def write(self) -> None:
        """Send until ``closing`` (replies first, with ``send_replies``), then return."""

    @abstractmethod
    def on_frame(self, message: Message) -> None:
        """Act on one frame from the client (an ASGI ``websocket.receive`` message); never block."""

    def reading_held(self) -> bool:
        """Whether the next client frame must wait (checked before each one; by default never)."""
        return False

    async def ready_to_read(self) -> None:
        """While ``reading_held``: return once the next client frame may be taken."""
        return

    def opened(self) -> None:
        """The connection is accepted (start the kind's timers here); by default nothing."""
        return

    def finish(self) -> None:
        """The connection is over: let go of what ``opened`` started; by default nothing."""
        return

    # -- life --------------------------------------------------------------------------------------

    async def run(self, first_frame: str | None = None) -> None:
        """Serve the connection until it closes, from either side."""
        websocket = self.websocket
        await websocket.accept()
        _forget_request(websocket)
        metrics.CONNECTIONS.labels(self.role).inc()
        self._log = ConnectionLog(self.role, self.channel, websocket.scope.get("client"))
        self.expire_at(self._expires)
        try:
            self._start_reading()
            self.opened()
            if first_frame is not None:
                await self.out.send_texts([first_frame])
                first_frame = None  # not kept for the connection's life
            self._sending = False
            await self.write()
            if self._close is not None and not self._gone:
                await websocket.close(*self._close)
        except WebSocketDisconnect:
            pass
        finally:
            if self._reader is not None:
                self._reader.cancel()
            if self._inbox is not None:
                self._inbox.listener = None
            if self._expiry is not None:
                self._expiry.cancel()
            self.finish()
            metrics.CONNECTIONS.labels(self.role).dec()
            self._log_close()

    @property
    def closing(self) -> bool:
        """The writer should wind down: the relay asked to close, or the client left."""
        return self._closing

    @property
    def gone(self) -> bool:
        """The client left: nothing more can be sent."""
        return self._gone

    def request_close(self, code: int, reason: str) -> None:
        """Close with ``code``, once ``write`` has sent what the kind owes (drain, expiry, flood)."""
        if not self._closing:
            self._close = (code, reason)
            self._stop()

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the connection starts closing meanwhile."""
        if self._closing:
            return
        if self._closing_waiter is None:
            self._closing_waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closing_waiter), seconds)

    def _stop(self) -> None:
        self._closing = True
        if self._closing_waiter is not None and not self._closing_waiter.done():
            self._closing_waiter.set_result(None)
        self.wake.set()
        if self._room is not None:
            self._room.set()

    def _left(self, message: Message) -> None:
        """The client is gone, or the protocol closed it itself: stop writing, send no close frame."""
        if self._gone:
            return
        if message.get(CLOSED_BY_RELAY) and self._close is None:
            self._close = (message.get("code", Close.ABNORMAL), message.get("reason", ""))
        else:
            self._client_code = message.get("code")
        self._gone = True
        self._stop()

    def expire_at(self, expires: float | None) -> None:
        """Close the connection with 4401 when its token's ``exp`` (a Unix time) passes; a later
        call (a refreshed token) replaces the earlier."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if expires is not None:
            delay = max(0.0, expires - time.time())
            self._expiry = asyncio.get_running_loop().call_later(
                delay, self.request_close, Close.TOKEN_EXPIRED, TOKEN_EXPIRED_REASON
            )

    def _log_close(self) -> None:
        if self._log is None:
            return
        if self._close is not None:
            self._log.closed(self._close[0], self._close[1], "relay")
        else:
            self._log.closed(self._client_code, "", "client")

    # -- replies -----------------------------------------------------------------------------------

    def reply(self, text: str) -> None:
        self._queue(text)

    def reply_later(self, future: asyncio.Future[Any], render: Render) -> None:
        """A reply that is known once ``future`` is done; later replies wait behind it."""
        self._queue((future, render))

    def refuse(self, code: ErrorCode, detail: str, channel: str | None = None, ref: frames.Ref = "") -> None:
        """The client's frame is refused: answer with an error (a flood closes the connection).
        ``channel`` and ``ref`` (on ``/ws``) name what the frame was about."""
        if self._flood is None:
            self._flood = FloodGuard()
        if self._flood.flooding():
            self.request_close(Close.POLICY, FLOOD_REASON)
            return
        self.reply(self.error_text(code, detail, channel, ref))

    def report(self, code: ErrorCode, detail: str, channel: str | None = None, ref: frames.Ref = "") -> None:
        """Tell the client of an error that is no bad frame (not its doing, or answered otherwise:
        a rate limit); not counted by the flood rule."""
        self.reply(self.error_text(code, detail, channel, ref))

    def error_text(
        self, code: ErrorCode, detail: str, channel: str | None = None, ref: frames.Ref = ""
    ) -> str:
        """An error frame's text, counted in the metrics and logged with the connection."""
        metrics.ERRORS.labels(code).inc()
        if self._log is not None:
            self._log.error(code, detail)
        return frames.error(code, detail, channel, ref)

    @property
    def has_replies(self) -> bool:
        return bool(self._replies)

    @property
    def queued_replies(self) -> int:
        return len(self._replies) if self._replies is not None else 0

    async def wait_for_reply_room(self, limit: int) -> None:
        """Return once fewer than ``limit`` replies wait to be sent (or the connection closes)."""
        while self.queued_replies >= limit and not self._closing:
            if self._room is None:
                self._room = Wakeup()
            await self._room.wait()

    async def wait_for_first_reply(self) -> None:
        """Wait until the first queued reply is known (its future is done), or anything else wakes
        the writer (a closing connection, a client gone): never longer than Redis takes."""
        if self._replies:
            head = self._replies[0]
            if not isinstance(head, str) and not head[0].done():
                if self._watched is not head[0]:  # one callback per pending head, not per turn
                    self._watched = head[0]
                    head[0].add_done_callback(self._head_done)
                await self.wake.wait()

    def _head_done(self, future: asyncio.Future[Any]) -> None:
        if self.replies_at_once and not self._closing and self._send_replies_now() and self._watch_head():
            return
        self.wake.set()  # the writer sends, watches the next reply, or winds down

    def _watch_head(self) -> bool:
        """Have the first reply, when pending, send itself once known (``replies_at_once``);
        False when the writer is needed (a known reply left: more than a batch)."""
        replies = self._replies
        if not replies:
            return True
        head = replies[0]
        if isinstance(head, str) or head[0].done():
            return False
        if self._watched is not head[0]:
            self._watched = head[0]
            head[0].add_done_callback(self._head_done)
        return True

    def _send_replies_now(self) -> bool:
        """:meth:`send_replies` without waiting, from a callback: False when the wire does not
        take data now or the writer has replies on their way (they go first), and nothing was sent."""
        out = self.out
        if self._sending or not isinstance(out, Wire) or not out.open:
            return False
        replies = self._replies
        texts = self._known_replies(replies) if replies else []
        if texts:
            if not out.write_texts(texts):  # the transport closed meanwhile
                replies.extendleft(reversed(texts))  # type: ignore[union-attr]
                return False
            if self._room is not None:
                self._room.set()
        if replies is not None and not replies and self._replies is replies:
            self._replies = None
        return True

    async def send_replies(self) -> None:
        """Send the replies at the head of the queue that are known, in order, together; stop at
        the first that is not known yet."""
        replies = self._replies
        while replies:
            texts = self._known_replies(replies)
            if not texts:
                return
            if self._room is not None:
                self._room.set()
            self._sending = True
            try:
                await self.out.send_texts(texts)
            finally:
                self._sending = False
        if replies is not None and self._replies is replies:
            self._replies = None  # empty: a deque keeps 0.6 KB of room, made again when needed

    @staticmethod
    def _known_replies(replies: deque[Reply]) -> list[str]:
        """Take the replies at the head that are known (up to a batch), rendered, in order."""
        texts: list[str] = []
        while replies and len(texts) < _REPLY_BATCH:
            head = replies[0]
            if not isinstance(head, str):
                future, render = head
                if not future.done():
                    break
                head = render(future)
            replies.popleft()
            texts.append(head)
        return texts

    def _queue(self, reply: Reply) -> None:
        replies = self._replies
        if replies is None:
            replies = self._replies = deque()
        first = not replies  # else the writer is on its way, or waits for the first reply
        replies.append(reply)
        if first and not (self.replies_at_once and not self._sending and self._watch_head()):
            self.wake.set()

    # -- reading -----------------------------------------------------------------------------------

    def _start_reading(self) -> None:
        out = self.out
        if isinstance(out, Wire) and (self.reads_on_arrival or self.takes_at_once):
            self._inbox = inbox = out.inbox
            inbox.listener = self._on_event
            if not inbox.empty():  # it arrived before the listener
                self._reader = self._reading(self._take_frames())
        else:
            self._reader = self._reading(self._read_loop())

    def _reading(self, reader: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(reader)
        task.add_done_callback(self._reader_done)
        return task

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        """A reader that failed (a bug in ``on_frame``) closes the connection instead of leaving
        it open, unread."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s %s: reading failed", self.role, self.channel, exc_info=task.exception())
            self.request_close(Close.INTERNAL, "internal error")

    def _on_event(self, message: Message) -> bool:
        """The inbox's listener: called as each event arrives; True when the frame was taken."""
        if message["type"] == "websocket.disconnect":
            self._left(message)
        elif self._reader is not None:
            pass  # a reader is at work on the inbox: it takes this one too, in order
        elif self.takes_at_once and self._closing:
            pass  # left unread, and the socket paused: a closing busy kind reads nothing more
        elif self.takes_at_once and self._only_event() and not self.reading_held():
            self._take_at_once(message)
            return True
        else:
            self._reader = self._reading(self._take_frames())
        return False

    def _only_event(self) -> bool:
        """The event just arrived is the one waiting: taking it now keeps the order."""
        return self._inbox is not None and self._inbox.qsize() == 1

    def _take_at_once(self, message: Message) -> None:
        try:
            self.on_frame(message)
        except Exception:  # a bug in on_frame: as a failed reader task, not the protocol's error
            log.exception("%s %s: reading failed", self.role, self.channel)
            self.request_close(Close.INTERNAL, "internal error")

    async def _take_frames(self) -> None:
        """Act on the frames in the inbox, then end (uvicorn reads no more until it is empty)."""
        inbox = self._inbox
        assert inbox is not None
        try:
            for _ in range(inbox.qsize()):
                while self.reading_held() and not self._closing:
                    await self.ready_to_read()
                if self._closing and self.takes_at_once:
                    return  # a busy kind reads nothing more once closing (a closing one is not held)
                if not self._take(await self.websocket.receive()):  # there already: returns at once
                    return
        finally:
            self._reader = None

    async def _read_loop(self) -> None:
        # names bound once: a busy producer passes here for every frame
        receive, held, take = self.websocket.receive, self.reading_held, self._take
        while not self._closing:
            if held():
                await self.ready_to_read()
                continue  # held until closing, perhaps
            if not take(await receive()):
                return

    def _take(self, message: Message) -> bool:
        """Hand one event to the kind; False once the client is gone."""
        if message["type"] == "websocket.disconnect":
            self._left(message)
            return False
        self.on_frame(message)
        return True
