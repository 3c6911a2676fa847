"""Local fan-out: every consumer on this instance gets each message of its channel, in order.

- :mod:`~app.fanout.sink`: a message's frame, built once (:class:`Frame`), and the small
  :class:`Sink` a connection offers the fan-out to write it to;
- :mod:`~app.fanout.hub`: follows a channel through the broker for its first local consumer and
  lets go after its last;
- :mod:`~app.fanout.topic`: one followed channel: its position, its named states, hole filling;
- :mod:`~app.fanout.subscription`: one consumer's position in one channel, its bounded buffer;
- :mod:`~app.fanout.pages`: catch-up pages read once and shared.

The fan-out knows no transport and no server: it builds frames as bytes and writes them to sinks
(the server's wire implements :class:`Sink`); it asks the broker only for what
:class:`app.broker.interface.Follower` offers.
"""
