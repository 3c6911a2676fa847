"""The contract both ends share, in code: what the relay and its clients import alike.

- :mod:`app.protocol.codes`: close codes and error codes, one table (and which of them a client
  retries after);
- :mod:`app.protocol.frames`: the JSON text of every frame the relay sends;
- :mod:`app.protocol.names`: channel and group names, ``from`` positions, ``prefetch``;
- :mod:`app.protocol.streamid`: Redis Stream entry ids, the cursor every resume is built on.

Nothing here does I/O or knows a transport; ``docs/protocol.md`` is the same contract in prose.
"""
