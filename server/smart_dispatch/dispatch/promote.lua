-- promote.lua: move scheduled dispatches that are due onto the ready stream.
--
-- Key schema: see create.lua.
-- KEYS[1] sched zset   KEYS[2] ready stream
-- ARGV[1] at most this many
-- Returns the number moved. Clock: Redis TIME.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local sep = string.find(member, '|', 1, true)
  redis.call('XADD', KEYS[2], '*', 'id', string.sub(member, 1, sep - 1), 'token', string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
