"""The broker: the only thing that crosses processes. Everything that talks to Redis is here.

- :mod:`~app.broker.interface`: what a broker guarantees, one small interface per role (the hub's,
  the publisher's, the groups', the janitor's), and the values that cross it;
- :mod:`~app.broker.streams`: the Redis Streams implementation (:class:`RedisBroker`);
- :mod:`~app.broker.pubsub`: its Pub/Sub connection, supervised;
- :mod:`~app.broker.housekeeping`: retention, leases and dead consumers, for the janitor;
- :mod:`~app.broker.clients`, :mod:`~app.broker.calls`, :mod:`~app.broker.scripts`,
  :mod:`~app.broker.keys`: making Redis clients, one call's errors, the Lua scripts (``lua/``),
  every key name.

Nothing here knows the fan-out, the groups or the server.
"""
