-- presence.lua: a connection joins or leaves a channel's presence, and every instance hears of it.
--
-- KEYS[1]  the channel's presence entries          relay:{C}:presence  (hash: client id -> entry)
-- KEYS[2]  the channel's announcement channel      relay:{C}:live      (Pub/Sub; declared for routing)
--
-- ARGV[1]  "join" or "leave"
-- ARGV[2]  the connection's id, "<boot>.<n>" (<boot>: its instance's process, relay:present:<boot>)
-- ARGV[3]  what the hash holds for it: "<epoch> <entry JSON>" (for a leave: unused)
-- ARGV[4]  the frame the other connections on the channel receive (a join or leave frame)
-- ARGV[5]  the announcing command: PUBLISH, or SPUBLISH on a cluster (sharded Pub/Sub)
--
-- Announces "presence\0<client id>\0<frame>" on KEYS[2] once the hash changed (a lister that heard
-- it finds the change made): a join only when the entry is new (a join written again, after a
-- retry or in a new epoch, says nothing twice), a leave always (its entry may have been removed
-- already, as a dead process's, while its connection lived). Returns 1.

local entries, live, op, client, publish = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[5]
local announce = 'presence\0' .. client .. '\0' .. ARGV[4]

if op == 'join' then
  if redis.call('HSET', entries, client, ARGV[3]) == 1 then
    redis.call(publish, live, announce)
  end
else
  redis.call('HDEL', entries, client)
  redis.call(publish, live, announce)
end
return 1
