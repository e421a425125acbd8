-- update.lua: store a new version of a dispatch if nobody stored another one since; queue it;
-- log it for watchers; keep the dead-letter index in step with it; ack the claim it finishes;
-- all in one atomic step.
--
-- Key schema: see create.lua (every key carries the hash tag {d}).
-- KEYS[1] rec key   KEYS[2] the ready stream of the record's lane (its claims are acked there
-- too)   KEYS[3] sched zset   KEYS[4] msg key
-- KEYS[5] watch marker   KEYS[6] change log   KEYS[7] dead-letter zset
-- ARGV[1] expected version   ARGV[2] record JSON (version expected + 1)   ARGV[3] dispatch id
-- ARGV[4] due time in ms ("" = do not queue, "0" = now)   ARGV[5] retention in seconds once the
-- record is final ("" = not final: keep; a dead letter is kept whatever ARGV[5] says)   ARGV[6] consumer group   ARGV[7] ready-stream entry
-- to ack and delete ("" = none): acked whether or not the version matched, as the caller is done
-- with that claim either way   ARGV[8] change log lifetime in seconds   ARGV[9] "1" when the
-- new version is a dead letter (indexed, keeping an earlier entry's time), "0" when it is not
-- (unindexed)   ARGV[10] the record's lane
-- While the watch marker exists, the new version is appended to the change log (capped).
-- Returns 1 when stored, 0 when the stored version was not the expected one (then only the
-- claim is acked: neither the record nor the dead-letter index changes).
-- Clock: Redis TIME.

local function ack()
  if ARGV[7] ~= '' then
    redis.call('XACK', KEYS[2], ARGV[6], ARGV[7])
    redis.call('XDEL', KEYS[2], ARGV[7])
  end
end

local current = redis.call('HGET', KEYS[1], 'v')
if not current or current ~= ARGV[1] then
  ack()
  return 0
end
local token = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'v', token, 'json', ARGV[2], 'lane', ARGV[10])
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', 100, '*', 'v', token, 'json', ARGV[2])
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[8]))
end
local t = redis.call('TIME')
if ARGV[9] == '1' then
  redis.call('ZADD', KEYS[7], 'NX', t[1] .. '.' .. string.format('%06d', tonumber(t[2])), ARGV[3])
else
  redis.call('ZREM', KEYS[7], ARGV[3])
end
if ARGV[4] ~= '' then
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(ARGV[4]) <= now_ms then
    redis.call('XADD', KEYS[2], '*', 'id', ARGV[3], 'token', token, 'json', ARGV[2])
  else
    redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), ARGV[3] .. '|' .. token)
  end
end
if ARGV[9] == '1' then  -- a dead letter waits for an operator: it never expires
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[4])
elseif ARGV[5] ~= '' then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
end
ack()
return 1
