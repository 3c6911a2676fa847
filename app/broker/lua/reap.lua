-- reap.lua: remove a consumer group's consumer whose process is gone, if it holds nothing.
--
-- KEYS[1]  the channel's stream                    relay:{C}
-- ARGV[1]  group
-- ARGV[2]  consumer
-- ARGV[3]  min idle ms: the consumer has not read or claimed for this long
--
-- Removes it only when, all at once: no pending entry, idle for ARGV[3] (a live reader polls far
-- more often). The caller checked first that its process has no heartbeat (relay:alive:<consumer>
-- lives in another slot of a cluster, so it cannot be read here); a process that comes back
-- in between only finds its consumer made again by its next read. Returns 1 when removed, else 0.

if redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])[1] then
  return 0
end
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, idle
  for i = 1, #consumer, 2 do
    if consumer[i] == 'name' then name = consumer[i + 1] end
    if consumer[i] == 'idle' then idle = consumer[i + 1] end
  end
  if name == ARGV[2] then
    if tonumber(idle) < tonumber(ARGV[3]) then
      return 0
    end
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
    return 1
  end
end
return 0
