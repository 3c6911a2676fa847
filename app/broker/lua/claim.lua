-- claim.lua: hand a consumer group's stale pending entries to a consumer, or to the dead letters.
--
-- KEYS[1]  the channel's stream                    relay:{C}
-- KEYS[2]  the channel's dead-letter stream        relay:{C}:dead
--
-- ARGV[1]  group
-- ARGV[2]  consumer that takes the claimed entries
-- ARGV[3]  min idle ms: entries nobody has touched for this long (their holder went away)
-- ARGV[4]  max deliveries: an entry delivered this many times goes to the dead letters instead
-- ARGV[5]  how many entries to claim at most
-- ARGV[6]  MAXLEN of the dead-letter stream (0: no limit)
--
-- Returns {claimed, dead}: claimed = {{id, data, deliveries}, ...} now owned by ARGV[2], with the
-- delivery count this delivery makes; dead = ids moved to KEYS[2] (fields data, id, group,
-- deliveries) and acknowledged in the group. Atomic: two instances never claim or bury one entry twice.

local stream, dead_stream = KEYS[1], KEYS[2]
local group, consumer, min_idle = ARGV[1], ARGV[2], ARGV[3]
local max_deliveries, count, dead_maxlen = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

local function data_of(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'data' then
      return fields[i + 1]
    end
  end
  return 'null'
end

local function bury(id, deliveries)
  local entry = redis.call('XRANGE', stream, id, id)
  if entry[1] then
    local args = {dead_stream}
    if dead_maxlen > 0 then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = dead_maxlen
    end
    for _, v in ipairs({'*', 'data', data_of(entry[1][2]), 'id', id, 'group', group, 'deliveries', deliveries}) do
      args[#args + 1] = v
    end
    redis.call('XADD', unpack(args))
  end
  redis.call('XACK', stream, group, id)
end

local claimed, dead = {}, {}
local pending = redis.call('XPENDING', stream, group, 'IDLE', min_idle, '-', '+', count)
for _, p in ipairs(pending) do
  local id, deliveries = p[1], tonumber(p[4])
  if deliveries >= max_deliveries then
    bury(id, deliveries)
    dead[#dead + 1] = id
  else
    local got = redis.call('XCLAIM', stream, group, consumer, min_idle, id)
    if got[1] then
      claimed[#claimed + 1] = {id, data_of(got[1][2]), deliveries + 1}
    end
    -- an entry retention removed is dropped from the group by XCLAIM itself
  end
end
return {claimed, dead}
