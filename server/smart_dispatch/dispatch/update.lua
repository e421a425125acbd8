-- update.lua: store a new version of a dispatch if nobody stored another one since; queue it.
--
-- Key schema: see create.lua.
-- KEYS[1] rec key   KEYS[2] ready stream   KEYS[3] sched zset   KEYS[4] msg key
-- ARGV[1] expected version   ARGV[2] record JSON (version expected + 1)   ARGV[3] dispatch id
-- ARGV[4] due time in ms ("" = do not queue, "0" = now)   ARGV[5] retention in seconds once the
-- record is final ("" = not final: keep)
-- Returns 1 when stored, 0 when the stored version was not the expected one.

local current = redis.call('HGET', KEYS[1], 'v')
if not current or current ~= ARGV[1] then
  return 0
end
local token = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'v', token, 'json', ARGV[2])
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(ARGV[4]) <= now_ms then
    redis.call('XADD', KEYS[2], '*', 'id', ARGV[3], 'token', token)
  else
    redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), ARGV[3] .. '|' .. token)
  end
end
if ARGV[5] ~= '' then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
end
return 1
