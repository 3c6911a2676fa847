-- presence.lua: a connection joins or leaves a channel's presence, and every instance hears of it.
--
-- KEYS[1]  the channel's presence entries          relay:{C}:presence  (hash: client id -> entry)
-- KEYS[2]  the channel's announcement channel      relay:{C}:live      (Pub/Sub; declared for routing)
--
-- ARGV[1]  "join" or "leave"
-- ARGV[2]  the connection's id, "<boot>.<n>" (<boot>: its instance's process, relay:present:<boot>)
-- ARGV[3]  the entry, JSON: {"client":...,"user":...,"info":...}
-- ARGV[4]  the frame the other connections on the channel receive (a join or leave frame)
--
-- Announces "presence\0<client id>\0<frame>" on KEYS[2], after the hash changed: an instance that
-- lists the channel once it heard the join finds the entry. Returns 1.

local entries, live, op, client = KEYS[1], KEYS[2], ARGV[1], ARGV[2]

if op == 'join' then
  redis.call('HSET', entries, client, ARGV[3])
else
  redis.call('HDEL', entries, client)
end
redis.call('PUBLISH', live, 'presence\0' .. client .. '\0' .. ARGV[4])
return 1
