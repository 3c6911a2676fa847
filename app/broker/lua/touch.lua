-- touch.lua: keep a consumer's pending entries from looking abandoned while its members work.
--
-- KEYS[1]  the channel's stream                    relay:{C}
-- ARGV[1]  group
-- ARGV[2]  consumer
-- ARGV[3..] entry ids its members hold
--
-- Resets the idle time of each id still pending for ARGV[2] (XCLAIM ... JUSTID counts no
-- delivery). An id that another consumer claimed meanwhile is left where it is.
-- Returns the number of ids touched.

local touched = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    touched = touched + 1
  end
end
return touched
