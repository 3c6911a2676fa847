"""Consumer groups (work queues): each message of a channel goes to one member of a group.

A process is one Redis consumer in every group it serves (named ``RELAY_INSTANCE_NAME``). For
each (channel, group) with local members, one :class:`~app.groups.reader.GroupReader` reads for
all of them and hands each entry to a member with room (at most ``prefetch`` unacknowledged per
member):

- reads never block: the channel's announcements (through the hub), a member's ack and a
  member joining say when to read, so Redis connections stay the broker's constant few; acks are
  sent in batches, one XACK per turn of the reader;
- what members hold stays claimed by this process: its idle time is reset every third of
  ``RELAY_GROUP_CLAIM_IDLE_MS``;
- what a member held when it went away is no longer touched, so after the idle time some reader,
  on any instance, claims it (a new delivery, counted) or, once delivered
  ``RELAY_GROUP_MAX_DELIVERIES`` times, moves it to ``relay:{C}:dead``.

Modules: :mod:`~app.groups.member` (what a member is), :mod:`~app.groups.reader` (one reader),
:mod:`~app.groups.manager` (every reader of the process, and its heartbeat). The same machinery
serves WebSocket members (``app.server.routes.members``) and the worker runner
(``workers/runner.py``), whose "member" is a pool of handler tasks.
"""
