--[[ user_state.lua: what a decision reads about a person before the rules run, in one call that
only reads: their list memberships, their behaviour hash and their preferences hash. Run with
EVALSHA by stores.redis.RedisUserStateReader, on ONE Redis server only: the list sets and a
user's hashes carry different hash tags, so on a Cluster they live in different slots and the
reader pipelines the commands there instead.

Key schema (names built by lists/redis.py, behaviour/redis.py and preferences/redis.py;
<prefix> is configurable, {..} is the Cluster hash tag)
  <prefix>:{list}:<list>          SET   user ids on the list (<list>: allow, deny)
  <prefix>:{u:<user>}:behaviour   HASH  `active_ms` (epoch ms) and `<channel>:<event>` counters
  <prefix>:{u:<user>}:prefs       HASH  consents, mute, quiet hours, channel order, locale
                                        (field layout: preferences/preferences.lua)

KEYS  1..n  the list sets, in lists/base.py LIST_NAMES order; n+1  the user's behaviour hash;
      n+2   the user's preferences hash
ARGV  1     the user id
Reply an array: n integers (1 = on that list, 0 = not), then the behaviour hash and then the
      preferences hash, each an array of field/value pairs as HGETALL returns them (empty for
      none). Scripts get RESP2 replies from redis.call, so the layout is the same whichever
      protocol the client speaks.
]]

local n = #KEYS - 2
local reply = {}
for i = 1, n do
  reply[i] = redis.call('SISMEMBER', KEYS[i], ARGV[1])
end
reply[n + 1] = redis.call('HGETALL', KEYS[n + 1])
reply[n + 2] = redis.call('HGETALL', KEYS[n + 2])
return reply
