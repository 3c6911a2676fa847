-- lease.lua: take or keep a lease, so that one of several identical workers does a job.
--
-- KEYS[1]  the lease                               relay:janitor:lease
-- ARGV[1]  who asks (unique per process)
-- ARGV[2]  lease time in ms
--
-- Returns 1 when ARGV[1] holds the lease for ARGV[2] ms from now, else 0.

local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
