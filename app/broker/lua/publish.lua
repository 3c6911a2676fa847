-- publish.lua: append messages to a channel's stream, apply retention, announce the new entries.
--
-- KEYS[1]  the channel's stream                    relay:{C}
-- KEYS[2]  the channel's trim watermark            relay:{C}:trimmed
-- KEYS[3]  the channel's announcement channel      relay:{C}:live   (Pub/Sub; declared for routing:
--                                                  in a cluster a shard channel of C's slot)
-- KEYS[4]  optional: an idempotency key            relay:{C}:idem:<key>
--
-- ARGV[1]  MAXLEN: entries kept (0: no limit); trimming waits for a little slack, then is exact
-- ARGV[2]  max age in milliseconds (0: no limit)
-- ARGV[3]  idempotency window in seconds (with KEYS[4])
-- ARGV[4]  the announcing command: PUBLISH, or SPUBLISH on a cluster (sharded Pub/Sub)
-- ARGV[5..] the messages' JSON text, in order (none: only apply retention)
--
-- Returns {replayed, id1, id2, ...}. replayed = 1 when KEYS[4] already named an entry: then
-- id1 is that entry's id and nothing new is stored; the key is written again, unchanged, so that
-- a WAIT after this call also covers the entry (a replica that has this write has the entry).
-- With no messages (a retention-only call): {0, number of entries removed}.
--
-- Announces "prev\0id1\0data1\0id2\0data2..." where prev is the id of the stream's last entry
-- before this call ("0-0" when there is none). JSON text never holds a NUL byte.
--
-- The watermark KEYS[2] holds the id of the newest entry retention removed, so that a reader
-- resuming after id X knows it lost messages exactly when X < watermark. (Redis's own
-- max-deleted-entry-id is not moved by trimming.)

local stream, watermark, live, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local maxlen, max_age, announce = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[4]

if idem then
  local seen = redis.call('GET', idem)
  if seen then
    redis.call('SET', idem, seen, 'KEEPTTL')
    return {1, seen}
  end
end

local function trim_by_age()
  if max_age <= 0 then
    return nil, 0
  end
  local now = redis.call('TIME')
  local cutoff = string.format('%.0f', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age)
  local newest_old = redis.call('XREVRANGE', stream, '(' .. cutoff .. '-0', '-', 'COUNT', 1)
  if not newest_old[1] then
    return nil, 0
  end
  return newest_old[1][1], redis.call('XTRIM', stream, 'MINID', cutoff .. '-0')
end

local function trim_by_length()
  if maxlen <= 0 then
    return nil, 0
  end
  local length = redis.call('XLEN', stream)
  local slack = math.max(1, math.min(100, math.floor(maxlen / 10)))
  if length < maxlen + slack then
    return nil, 0
  end
  -- at most 1000 entries per call: a lowered MAXLEN converges over a few publishes
  local excess = math.min(length - maxlen, 1000)
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
  return head[#head][1], redis.call('XTRIM', stream, 'MAXLEN', length - excess)
end

local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
local prev = '0-0'
if last[1] then
  prev = last[1][1]
end

local reply = {0}
local announcement = {prev}
for i = 5, #ARGV do
  local id = redis.call('XADD', stream, '*', 'data', ARGV[i])
  reply[#reply + 1] = id
  announcement[#announcement + 1] = id
  announcement[#announcement + 1] = ARGV[i]
end

-- length trimming runs last: it removes newer entries than age trimming, so its id wins
local by_age, aged = trim_by_age()
local by_length, cut = trim_by_length()
local removed = by_length or by_age
if removed then
  redis.call('SET', watermark, removed)
end
if #reply == 1 then
  return {0, aged + cut}
end

if idem then
  redis.call('SET', idem, reply[2], 'EX', ARGV[3])
end
redis.call(announce, live, table.concat(announcement, '\0'))
return reply
