--[[ refund.lua: remove one message from caps (a send that never happened), atomically.
Key schema: see reserve.lua. Removing a message that is not counted is a no-op.

KEYS  first ARGV[2] sorted-set cap keys, then pairs (counter hash, counter marker of the member)
ARGV
  1  member   message id
  2  n_zsets  how many of KEYS are sorted sets
Reply  how many caps counted the member
]]

local member = ARGV[1]
local n_zsets = tonumber(ARGV[2])
local removed = 0
for i = 1, n_zsets do
  removed = removed + redis.call('ZREM', KEYS[i], member)
end
for i = n_zsets + 1, #KEYS, 2 do
  local marker = redis.call('GET', KEYS[i + 1])
  if marker then
    local bucket = string.match(marker, '^(%S+) ')
    local count = tonumber(redis.call('HGET', KEYS[i], bucket))
    if count and count > 1 then
      redis.call('HINCRBY', KEYS[i], bucket, -1)
    elseif count then
      redis.call('HDEL', KEYS[i], bucket)
    end
    redis.call('DEL', KEYS[i + 1])
    removed = removed + 1
  end
end
return removed
