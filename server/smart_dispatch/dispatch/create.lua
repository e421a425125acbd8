-- create.lua: persist a new dispatch and queue it, unless its message id was dispatched before.
--
-- Key schema (every key carries the hash tag {d}: one Cluster slot for all dispatch keys):
--   <prefix>:{d}:rec:<dispatch id>      hash    v = version, json = the record (JSON), lane
--                                               (absent in records stored before lanes: normal)
--   <prefix>:{d}:msg:<message id>       string  the dispatch id of that message
--   <prefix>:{d}:ready                  stream  ready work of the lane `normal`, read through the
--                                               consumer group `senders`: fields id, token
--                                               (record version), json (the record then)
--   <prefix>:{d}:ready:<lane>           stream  the same for the lanes critical, high and bulk
--   <prefix>:{d}:sched                  zset    "<dispatch id>|<token>" scored by due time (ms)
--   <prefix>:{d}:watched:<dispatch id>  string  present (with a TTL) while someone watches it
--   <prefix>:{d}:changes:<dispatch id>  stream  versions stored while watched: fields v, json
--   <prefix>:{d}:dead                   zset    dead-lettered dispatch ids scored by time (s)
--
-- KEYS[1] msg key   KEYS[2] rec key   KEYS[3] ready stream   KEYS[4] sched zset
-- ARGV[1] dispatch id   ARGV[2] record JSON (version 1)   ARGV[3] due time in ms ("" = now)
-- ARGV[4] the record's lane (KEYS[3] is that lane's stream)
-- Returns {1, id} when created, {0, existing id} when the message id was dispatched before.
-- Clock: Redis TIME.

local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing}
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'v', 1, 'json', ARGV[2], 'lane', ARGV[4])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '' or tonumber(ARGV[3]) <= now_ms then
  redis.call('XADD', KEYS[3], '*', 'id', ARGV[1], 'token', 1, 'json', ARGV[2])
else
  redis.call('ZADD', KEYS[4], tonumber(ARGV[3]), ARGV[1] .. '|1')
end
return {1, ARGV[1]}
