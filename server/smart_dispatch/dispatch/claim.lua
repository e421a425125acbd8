-- claim.lua: the upkeep of the ready stream, and the claim of what it finds, in one round trip:
-- promote the scheduled dispatches that are due, take over entries another consumer left
-- unacked for longer than the claim timeout (its worker crashed), read new entries, and hand up
-- to COUNT of them to this consumer, each with its record as stored now. Never blocks.
--
-- Key schema: see create.lua.
-- KEYS[1] sched zset   KEYS[2..] the ready streams of the lanes, in the order to serve them now
-- ARGV[1] consumer group   ARGV[2] consumer   ARGV[3] at most this many entries
-- ARGV[4] claim timeout in ms (entries pending longer are taken over)   ARGV[5] unused   ARGV[6] record key prefix, "<prefix>:{d}:rec:"   ARGV[7] promote at
-- most this many   ARGV[8] the ready streams' prefix, "<prefix>:{d}:ready" (a lane's stream is
-- it, for normal, or it .. ":" .. lane)   ARGV[9..] per stream of KEYS[2..]: its lane, then
-- its XAUTOCLAIM cursor
-- Also reads the record key ARGV[6] .. <dispatch id> of every entry promoted or handed out.
-- Those keys are known only from the schedule and the stream, so they cannot be in KEYS; they
-- carry the same {d} hash tag as KEYS[1], so on Redis Cluster they are in its slot, on the node
-- running the script.
-- A due scheduled entry whose record moved on (or expired) since it was scheduled is dropped:
-- workers would skip it anyway. Creates the consumer group (reading from the start of the
-- stream) when it is missing.
-- Due work is queued in its record's lane. Entries are read lane by lane in the order given,
-- until COUNT are found.
-- Returns {{lane, next XAUTOCLAIM cursor, ...}, then per entry: entry id, dispatch id, token,
-- record JSON (nil when the record is gone), lane}. Clock: Redis TIME.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- nothing due costs one O(log N) lookup of the schedule's head
local function stream_of(lane)
  if not lane or lane == 'normal' then
    return ARGV[8]
  end
  return ARGV[8] .. ':' .. lane
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[7]))
if #due > 0 then
  for _, member in ipairs(due) do
    local sep = string.find(member, '|', 1, true)
    local dispatch_id, token = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    local stored = redis.call('HMGET', ARGV[6] .. dispatch_id, 'v', 'json', 'lane')
    if stored[1] == token then
      redis.call('XADD', stream_of(stored[3]), '*', 'id', dispatch_id, 'token', token, 'json', stored[2])
    end
  end
  redis.call('ZREM', KEYS[1], unpack(due))
end

local count = tonumber(ARGV[3])
-- Take over what crashed workers left, in every lane (each with its own cursor).
local cursors = {}
local out = {cursors}
local taken = 0
local lane
local reclaimed_all = {}
for k = 2, #KEYS do
  lane = ARGV[5 + 2 * k]
  local reclaimed = redis.pcall('XAUTOCLAIM', KEYS[k], ARGV[1], ARGV[2], ARGV[4], ARGV[6 + 2 * k], 'COUNT', count)
  if type(reclaimed) == 'table' and reclaimed.err then
    if not string.find(reclaimed.err, 'NOGROUP', 1, true) then
      return redis.error_reply(reclaimed.err)
    end
    redis.call('XGROUP', 'CREATE', KEYS[k], ARGV[1], '0', 'MKSTREAM')
    reclaimed = {'0-0', {}}
  end
  reclaimed_all[k] = reclaimed[2]
  cursors[#cursors + 1] = lane
  cursors[#cursors + 1] = reclaimed[1]
end

local function take(entry)
  local fields = entry[2]
  if not fields then
    return -- deleted while pending (Redis 6.2 reports these; 7 drops them from the reply)
  end
  local dispatch_id, token
  for i = 1, #fields, 2 do
    if fields[i] == 'id' then
      dispatch_id = fields[i + 1]
    elseif fields[i] == 'token' then
      token = fields[i + 1]
    end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = dispatch_id
  out[#out + 1] = token
  -- as stored now: a taken-over entry's record has usually moved on since it was queued
  out[#out + 1] = redis.call('HGET', ARGV[6] .. dispatch_id, 'json')
  out[#out + 1] = lane
  taken = taken + 1
end

for k = 2, #KEYS do
  lane = ARGV[5 + 2 * k]
  for _, entry in ipairs(reclaimed_all[k]) do
    take(entry)
  end
end
for k = 2, #KEYS do
  if taken >= count then
    break
  end
  lane = ARGV[5 + 2 * k]
  local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count - taken, 'STREAMS', KEYS[k], '>')
  if read then
    for _, entry in ipairs(read[1][2]) do
      take(entry)
    end
  end
end
return out
