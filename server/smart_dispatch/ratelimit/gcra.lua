-- gcra.lua: a provider's rate limit (ratelimit/base.py is the reference), one atomic step.
-- KEYS[1] <prefix>:{rl:<key>}: the theoretical arrival time (TAT), epoch microseconds
-- ARGV[1] emission interval in microseconds (1e6 / rate)   ARGV[2] burst   ARGV[3] the longest
-- wait (microseconds) for which the slot is taken; a longer one is only reported
-- Returns the wait in microseconds until the send may go (0: now). Clock: Redis TIME.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local slot = math.max(now, tat - interval * (tonumber(ARGV[2]) - 1))
if slot - now <= tonumber(ARGV[3]) then
  local new_tat = math.max(tat, slot) + interval
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
end
return string.format('%d', slot - now)
