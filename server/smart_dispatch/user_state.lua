--[[ user_state.lua: what a decision reads about a person before the rules run, in one call that
only reads: their list memberships and their behaviour hash. Run with EVALSHA by
redis_stores.RedisUserStateReader, on ONE Redis server only: the list sets and a user's hash carry
different hash tags, so on a Cluster they live in different slots and the reader pipelines the
commands there instead.

Key schema (names built by lists/redis.py and behaviour/redis.py; <prefix> is configurable,
{..} is the Cluster hash tag)
  <prefix>:{list}:<list>          SET   user ids on the list (<list>: allow, deny)
  <prefix>:{u:<user>}:behaviour   HASH  `active_ms` (epoch ms) and `<channel>:<event>` counters

KEYS  1..n  the list sets, in lists/base.py LIST_NAMES order; n+1  the user's behaviour hash
ARGV  1     the user id
Reply a flat array: n integers (1 = on that list, 0 = not), then the hash's field/value pairs as
      HGETALL returns them (none for a user without behaviour). Scripts get RESP2 replies from
      redis.call, so the layout is the same whichever protocol the client speaks.
]]

local n = #KEYS - 1
local reply = {}
for i = 1, n do
  reply[i] = redis.call('SISMEMBER', KEYS[i], ARGV[1])
end
local fields = redis.call('HGETALL', KEYS[n + 1])
for i = 1, #fields do
  reply[n + i] = fields[i]
end
return reply
