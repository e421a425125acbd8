-- Append decision log entries and history events, and keep the log within its bounds.
--
-- KEYS[1]  the index: a sorted set, member = message id, score = decided at (ms)
-- ARGV[1]  the key head of entries and histories, e.g. "sd:{log}:" (same hash slot as KEYS[1]):
--          entry "<head>m:<message id>" (a JSON string), history "<head>h:<message id>" (a list
--          of JSON strings, oldest first)
-- ARGV[2]  retention in ms: older entries are dropped, and keys expire after it
-- ARGV[3]  the most entries kept (the oldest beyond it are dropped)
-- ARGV[4]  n, the number of entries that follow
-- ARGV[5..4+3n]  per entry: message id, decided at (ms), JSON
-- then     per history event: message id, JSON (dropped when the message is not in the log)
-- Returns the number of entries dropped by the bounds.
local head, retention, most, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local i = 5
for _ = 1, n do
  local id, at, json = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('SET', head .. 'm:' .. id, json, 'PX', retention)
  redis.call('ZADD', KEYS[1], at, id)
  i = i + 3
end
while i <= #ARGV do
  local id, json = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', head .. 'm:' .. id) == 1 then
    redis.call('RPUSH', head .. 'h:' .. id, json)
    redis.call('PEXPIRE', head .. 'h:' .. id, retention)
  end
  i = i + 2
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dropped = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - retention))
local excess = redis.call('ZCARD', KEYS[1]) - #dropped - most
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], #dropped, #dropped + excess - 1)
  for _, id in ipairs(oldest) do dropped[#dropped + 1] = id end
end
for _, id in ipairs(dropped) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', head .. 'm:' .. id, head .. 'h:' .. id)
end
return #dropped
