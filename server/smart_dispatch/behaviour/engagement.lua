--[[ engagement.lua: the engagement model's writes, each atomic. behaviour/memory.py is the
reference for the semantics (see behaviour/base.py); behaviour/redis.py calls it.

Key schema (<prefix> is configurable, {..} is the Cluster hash tag)
  <prefix>:{u:<user>}:behaviour      HASH  `active_ms` (epoch ms), decayed counts
                                           `<channel>:<kind>`, `slot:<slot>:<kind>` and
                                           `active:u<UTC hour>` (ACTIVE events), each
                                           "<value> <as of, epoch s>"
  <prefix>:{u:<user>}:msg:<message>  HASH  a decided message: ch, slot, cat; and one field per
                                           counted event `<kind>:<channel>` (and `sent` when an
                                           event counted the send of a message not decided here)
  <prefix>:{pop}:engagement          HASH  the population: `<category>:<channel>:<kind>` and
                                           `slot:<slot>:<kind>`, decayed like a user's

Modes (ARGV 1)
  "D" decided.  KEYS behaviour, message.  ARGV mode, at_s, half_life_s, channel, slot, category,
                message_ttl_s, behaviour_ttl_s.  Reply 1, or 0 when the message was decided before.
  "E" event.    KEYS behaviour, message.  ARGV mode, at_s, half_life_s, kind, channel, value,
                engaged (1: also the person's activity), message_ttl_s, behaviour_ttl_s.
                Reply {counted 0|1, channel, slot, category, sent_too 0|1}.
  "P" population. KEYS population.  ARGV mode, at_s, half_life_s, then key, amount pairs.
]]

local mode = ARGV[1]
local at = tonumber(ARGV[2])
local half_life = tonumber(ARGV[3])

local function add(key, field, amount)
  local raw = redis.call('HGET', key, field)
  local value, as_of = amount, at
  if raw then
    local sep = string.find(raw, ' ', 1, true)
    local old, old_at = tonumber(raw), at -- a plain count (before counts decayed): as of now
    if sep then
      old, old_at = tonumber(string.sub(raw, 1, sep - 1)), tonumber(string.sub(raw, sep + 1))
    end
    if at >= old_at then
      value = old * 2 ^ (-(at - old_at) / half_life) + amount
    else
      value, as_of = old + amount * 2 ^ (-(old_at - at) / half_life), old_at
    end
  end
  redis.call('HSET', key, field, string.format('%.17g %.17g', value, as_of))
end

if mode == 'P' then
  for i = 4, #ARGV, 2 do
    add(KEYS[1], ARGV[i], tonumber(ARGV[i + 1]))
  end
  return 1
end

local user, message = KEYS[1], KEYS[2]

if mode == 'D' then
  local channel, slot, category = ARGV[4], ARGV[5], ARGV[6]
  if redis.call('HSETNX', message, 'ch', channel) == 0 then
    return 0
  end
  redis.call('HSET', message, 'slot', slot, 'cat', category)
  redis.call('EXPIRE', message, ARGV[7])
  add(user, channel .. ':sent', 1)
  add(user, 'slot:' .. slot .. ':sent', 1)
  redis.call('EXPIRE', user, ARGV[8])
  return 1
end

-- mode "E"
local kind, channel, value = ARGV[4], ARGV[5], tonumber(ARGV[6])
if ARGV[7] == '1' then
  local ms = math.floor(at * 1000)
  local current = tonumber(redis.call('HGET', user, 'active_ms') or '0')
  if ms > current then
    redis.call('HSET', user, 'active_ms', ms)
  end
end
if kind == 'active' then
  add(user, string.format('active:u%02d', math.floor(at / 3600) % 24), 1)
end
if channel == '' then
  redis.call('EXPIRE', user, ARGV[9])
  return { 0, '', '', '', 0 }
end
local known = redis.call('HMGET', message, 'ch', 'slot', 'cat')
if redis.call('HSETNX', message, kind .. ':' .. channel, 1) == 0 then
  return { 0, '', '', '', 0 }
end
local sent_too = 0
if not known[1] and redis.call('HSETNX', message, 'sent', 1) == 1 then
  sent_too = 1
end
if not known[1] then
  redis.call('EXPIRE', message, ARGV[8])
end
local ch, slot, cat = known[1] or channel, known[2] or '', known[3] or ''
add(user, ch .. ':' .. kind, 1)
if kind == 'converted' and value ~= 0 then
  add(user, ch .. ':value', value)
end
if sent_too == 1 then
  add(user, ch .. ':sent', 1)
end
if slot ~= '' and kind == 'opened' then
  add(user, 'slot:' .. slot .. ':opened', 1)
end
redis.call('EXPIRE', user, ARGV[9])
return { 1, ch, slot, cat, sent_too }
