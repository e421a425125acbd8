--[[ preferences.lua: change a person's stored preferences atomically. preferences/memory.py is
the reference for the semantics (`merged`, `with_consent` in preferences/base.py);
preferences/redis.py calls it. A decision reads the hash in its user-state round trip
(user_state.lua), never through this script.

Key schema (<prefix> is configurable, {..} is the Cluster hash tag shared with the person's
caps and behaviour)
  <prefix>:{u:<user>}:prefs   HASH  c:<category>:<channel>  "1" opted in, "0" opted out
                                    (either may be "*"); mute_until (epoch ms);
                                    quiet_hours ("HH:MM-HH:MM", local clock); channel_order
                                    (channels, comma-separated); locale; updated_ms (epoch ms);
                                    bad:<channel> the digest of a dead address (written with
                                    one HSET by preferences/redis.py, never by this script)
                                    No TTL: a person's choices outlive their inactivity.

KEYS  1     the person's preferences hash
ARGV  1     updated_ms
      2     "1": replace the consents (every c:* field is dropped first); "0": keep them
      3..   field, value pairs to set; an empty value deletes the field
Reply the hash after the change, as HGETALL returns it.
]]

local key = KEYS[1]
if ARGV[2] == '1' then
  local fields = redis.call('HKEYS', key)
  for i = 1, #fields do
    if string.sub(fields[i], 1, 2) == 'c:' then
      redis.call('HDEL', key, fields[i])
    end
  end
end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', key, ARGV[i])
  else
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', key, 'updated_ms', ARGV[1])
return redis.call('HGETALL', key)
