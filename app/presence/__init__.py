"""Presence: which ``/ws`` connections are on a channel right now, across every instance.

:class:`~app.presence.tracker.Presence` is one process's part: it names its connections
(``<boot>.<n>``), writes their joins and leaves to Redis in order (batched, retried), and keeps one
heartbeat for the process, so the cost of staying listed does not grow with the connections.
``docs/design.md`` ("Presence") has the layout, its cost and how it fails.
"""
