"""The broker's Lua scripts, read once from ``lua/``; each file's header names its KEYS and ARGV.

===============  ==================================================================================
``publish.lua``  append a run of messages, apply retention, announce the new entries (also used,
                 with no messages, to apply retention alone)
``claim.lua``    hand a group's stale pending entries to a consumer, or to the dead letters
``touch.lua``    reset the idle time of the entries a consumer's members hold
``lease.lua``    take or keep the janitor's lease
``reap.lua``     remove a group consumer whose process is gone, if it holds nothing
``presence.lua`` a connection joins or leaves a channel's presence, announced to every instance
``presence_prune.lua``  remove a channel's entries of dead processes, unless they changed since read
===============  ==================================================================================
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Final


def source(name: str) -> str:
    return resources.files("app.broker").joinpath(f"lua/{name}.lua").read_text(encoding="utf-8")


PUBLISH: Final = source("publish")
PUBLISH_SHA: Final = hashlib.sha1(PUBLISH.encode()).hexdigest()
CLAIM: Final = source("claim")
TOUCH: Final = source("touch")
LEASE: Final = source("lease")
REAP: Final = source("reap")
PRESENCE: Final = source("presence")
PRESENCE_PRUNE: Final = source("presence_prune")
