"""The server: everything that speaks HTTP and WebSocket, on top of the rest.

- :mod:`~app.server.app`: the FastAPI app factory and its lifespan;
- :mod:`~app.server.lifecycle`: one instance's running parts (broker, hub, groups, publisher),
  built in order, closed in reverse, and its drain;
- :mod:`~app.server.serve`: ``relay serve``, uvicorn with the drain on SIGTERM;
- :mod:`~app.server.sockets`: WebSocket paths dispatched ahead of FastAPI;
- :mod:`~app.server.connection`: the one base of every kind of socket;
- :mod:`~app.server.wire` and :mod:`~app.server.outlet`: where a connection's frames go, straight
  to its transport (the wire) or through ASGI;
- :mod:`~app.server.auth`: tokens;
- :mod:`~app.server.routes`: one module per endpoint.

Nothing below the server imports it.
"""
