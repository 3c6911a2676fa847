-- presence_prune.lua: remove the entries of dead processes from a channel's presence, unless
-- they changed since they were read.
--
-- KEYS[1]  the channel's presence entries          relay:{C}:presence  (hash: client id -> entry)
--
-- ARGV     pairs: a client id, then the value it held when it was found dead
--
-- An entry is removed only if it still holds that value: a process whose heartbeat came back
-- writes its entries again in a new epoch meanwhile, and those must stay. Returns how many went.

local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    removed = removed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return removed
