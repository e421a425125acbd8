--[[ reserve.lua: check every cap of the candidate options and reserve the first option whose caps
all have room, in one atomic step (Redis runs a script without interleaving other commands).
The semantics are those of counters/base.py; counters/memory.py is the reference.

Clock and units
  Every instant, score and window is a whole number of MILLISECONDS (epoch ms for instants), as in
  counters/base.py (`to_ms`): the caller rounds `at` and windows, now = redis.call('TIME') rounded
  to the nearest ms. Integers below 2^53 are exact in Lua numbers and in sorted-set scores, so the
  arithmetic (`at - window`, `score + window`) is exact; replies carry integers (false = absent).

Key schema (names built by counters/redis.py; <prefix> is configurable, {..} is the Cluster hash tag)
  <prefix>:{u:<user>}:cap:<cap>      ZSET   member = message id, score = planned send instant
  <prefix>:{g}:cap:<cap>             ZSET   the same for a global cap (shared by all users)
  <prefix>:{g}:ctr:<cap>             HASH   sliding-window counter of a high-volume global cap:
                                            field = bucket floor(t / window), value = count
  <prefix>:{g}:ctr:<cap>:m:<member>  STRING "<bucket> <score>": this message is counted in bucket
  Sorted sets drop entries scored <= now - window and expire a window after their latest score
  (PEXPIRE window + max(0, latest - now)), so an idle user's keys vanish. Counter buckets drop
  once they stop weighing (2 windows after they start); hash and marker expire at that instant.

Sliding-window counter (approximate, like `limits`' sliding window counter): at instant t in
  bucket b with fraction f = t / window - b, the count is count[b-1] * (1 - f) + count[>= b].
  `used` is its ceiling, the cap is full when used >= limit, retry_at solves the weighted count for
  the first instant (rounded up to a ms) it drops to limit - 1. reset_at is when the oldest
  weighing bucket stops weighing.

KEYS  every key the call may touch, each once; caps name them by 1-based index.
ARGV
  1  member     message id
  2  at         planned send instant (ms); "" means now
  3  dry_run    "1" check only, "0" record
  4  mode       "F" repeat check, then evaluate: the whole contract in one call
                "C" tell which options hold the member in all their caps (with score and usages);
                    when none does and ARGV[5] is "1", evaluate like "F"
                "D" repeat check only: never evaluates
                "E" evaluate only: no repeat check
                "U" undo the reservation of the single option given (cluster: the other slot group
                    refused it): restore each cap's previous score (extra ARGV after the options,
                    one per cap: the score, or "" = the member was absent) and report usages
  5  eval_ok    see mode "C"
  6  n_options  then per option: eligible ("1" may be chosen, "0" reported only: never chosen,
                never recorded), n_caps, and 5 fields per cap: kind ("z" sorted set, "c" counter),
                key index, limit, window (ms), marker key index ("0" for "z")

Reply  { now, at, kind, chosen, reserved_at, entries, previous }   instants in ms, false = absent
  kind 0  evaluated: chosen is the 0-based option index or -1; entries are the evaluated options
          in order up to and including the chosen one: { allowed 0|1, retry_at, usages }
  kind 1  repeat: chosen holds the member everywhere; entries = { its { 1, false, usages } }
  kind 2  candidates (mode "C"): one entry per option: { holds 0|1, score of its first cap, usages }
  usages  one { used, reset_at } per cap of the option, in order
  previous  when this call recorded an option: each of its caps' score before (false = absent),
            the input of a later mode "U"; else {}
]]

local member = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000 + 0.5)
local at = now
if ARGV[2] ~= '' then
  at = tonumber(ARGV[2])
end
local dry_run = ARGV[3] == '1'
local mode = ARGV[4]
local eval_ok = ARGV[5] == '1'
local EPSILON = 1e-9 -- absorbs rounding in the counter's weighted sum (a count)
local MS_EPSILON = 1e-6 -- and in an instant computed from a fraction of a window (ms)

-- An integer as a command argument (Lua's own tostring switches to exponents above 1e14).
local function int(x)
  return string.format('%d', x)
end

-- A reply value: Redis turns false into a nil reply (a nil would end the array).
local function maybe(x)
  if x == nil then
    return false
  end
  return x
end

local function ttl(ms)
  return int(math.max(1, math.ceil(ms)))
end

local options = {}
local a = 7
for o = 1, tonumber(ARGV[6]) do
  local option = { eligible = ARGV[a] == '1', caps = {} }
  local n_caps = tonumber(ARGV[a + 1])
  a = a + 2
  for c = 1, n_caps do
    local marker = tonumber(ARGV[a + 4])
    if tonumber(ARGV[a + 2]) < 1 then
      return redis.error_reply('cap limit must be >= 1')
    end
    option.caps[c] = {
      kind = ARGV[a],
      key = KEYS[tonumber(ARGV[a + 1])],
      limit = tonumber(ARGV[a + 2]),
      window = tonumber(ARGV[a + 3]),
      marker = marker > 0 and KEYS[marker] or nil,
    }
    a = a + 5
  end
  options[o] = option
end

-- Counter state, loaded once per key (dropping buckets that no longer weigh): bucket -> count.
local counters = {}
local function counter(cap)
  local state = counters[cap.key]
  if state then
    return state
  end
  state = {}
  local stale = {}
  local flat = redis.call('HGETALL', cap.key)
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    if (b + 2) * cap.window <= now then
      stale[#stale + 1] = flat[i]
    else
      state[b] = tonumber(flat[i + 1])
    end
  end
  if #stale > 0 then
    redis.call('HDEL', cap.key, unpack(stale))
  end
  counters[cap.key] = state
  return state
end

-- The member's counter entry: bucket, score (nil when absent). Cached per marker key.
local markers = {}
local function marker_of(cap)
  local entry = markers[cap.marker]
  if entry == nil then
    entry = false
    local value = redis.call('GET', cap.marker)
    if value then
      local b, s = string.match(value, '^(%S+) (%S+)$')
      entry = { tonumber(b), tonumber(s) }
    end
    markers[cap.marker] = entry
  end
  if entry then
    return entry[1], entry[2]
  end
  return nil, nil
end

local function score_of(cap)
  if cap.kind == 'z' then
    local score = redis.call('ZSCORE', cap.key, member)
    if score then
      return tonumber(score)
    end
    return nil
  end
  local _, score = marker_of(cap)
  return score
end

local function holds(option)
  if #option.caps == 0 then
    return false
  end
  for _, cap in ipairs(option.caps) do
    if score_of(cap) == nil then
      return false
    end
  end
  return true
end

-- Weighted counter at `at`, leaving one entry out of bucket `skip`; also the oldest weighing bucket.
local function weighted(cap, skip)
  local b = math.floor(at / cap.window)
  local f = at / cap.window - b
  local total, oldest = 0, nil
  for k, n in pairs(counter(cap)) do
    if k == skip then
      n = n - 1
    end
    if n > 0 and k >= b - 1 then
      total = total + (k == b - 1 and n * (1 - f) or n)
      if oldest == nil or k < oldest then
        oldest = k
      end
    end
  end
  return total, oldest
end

-- First instant >= at where the weighted count (without `skip`) is at most limit - 1. The count is
-- continuous and non-increasing in time, linear inside a bucket: walk buckets until it fits.
local function counter_retry_at(cap, skip)
  local counts, later = {}, 0
  local b = math.floor(at / cap.window)
  for k, n in pairs(counter(cap)) do
    if k == skip then
      n = n - 1
    end
    if n > 0 then
      counts[k] = n
      if k >= b then
        later = later + n
      end
    end
  end
  local room = cap.limit - 1
  while later > room do
    later = later - (counts[b] or 0)
    b = b + 1
  end
  local previous = counts[b - 1] or 0
  local f = 0
  if previous > 0 then
    f = math.max(0, 1 - (room - later) / previous)
  end
  return math.max(at, b * cap.window + math.ceil(f * cap.window - MS_EPSILON))
end

-- nil when the cap has room for the member at `at`, else the instant it will have room.
local function refusal(cap)
  if cap.kind == 'c' then
    local skip = marker_of(cap)
    local total = weighted(cap, skip)
    if math.ceil(total - EPSILON) < cap.limit then
      return nil
    end
    return counter_retry_at(cap, skip)
  end
  local low = '(' .. int(at - cap.window)
  local counted = redis.call('ZCOUNT', cap.key, low, '+inf')
  local own = score_of(cap)
  if own and own > at - cap.window then
    counted = counted - 1
  end
  if counted < cap.limit then
    return nil
  end
  -- base.retry_at: the (counted - limit)-th (0-based) counted score, the member left out
  local wanted = counted - cap.limit + 1
  local rows = redis.call('ZRANGEBYSCORE', cap.key, low, '+inf', 'WITHSCORES', 'LIMIT', 0, wanted + 1)
  local seen = 0
  for i = 1, #rows, 2 do
    if rows[i] ~= member then
      seen = seen + 1
      if seen == wanted then
        return tonumber(rows[i + 1]) + cap.window
      end
    end
  end
  return at + cap.window -- unreachable: ZCOUNT said there are enough rows
end

local function usage(cap)
  if cap.kind == 'c' then
    local total, oldest = weighted(cap, nil)
    local reset = nil
    if oldest then
      reset = (oldest + 2) * cap.window
    end
    return { math.max(0, math.ceil(total - EPSILON)), maybe(reset) }
  end
  local low = '(' .. int(at - cap.window)
  local used = redis.call('ZCOUNT', cap.key, low, '+inf')
  local first = redis.call('ZRANGEBYSCORE', cap.key, low, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local reset = nil
  if first[2] then
    reset = tonumber(first[2]) + cap.window
  end
  return { used, maybe(reset) }
end

local function usages(option)
  local result = {}
  for c, cap in ipairs(option.caps) do
    result[c] = usage(cap)
  end
  return result
end

local function record(cap)
  if cap.kind == 'z' then
    redis.call('ZADD', cap.key, int(at), member)
    local latest = tonumber(redis.call('ZRANGE', cap.key, -1, -1, 'WITHSCORES')[2])
    redis.call('PEXPIRE', cap.key, ttl(cap.window + math.max(0, latest - now)))
    return
  end
  local state = counter(cap)
  local old = marker_of(cap)
  if old and state[old] then -- counted before (a partial record): move it, never count it twice
    state[old] = state[old] - 1
    if state[old] <= 0 then
      state[old] = nil
      redis.call('HDEL', cap.key, int(old))
    else
      redis.call('HINCRBY', cap.key, int(old), -1)
    end
  end
  local b = math.floor(at / cap.window)
  state[b] = (state[b] or 0) + 1
  redis.call('HINCRBY', cap.key, int(b), 1)
  redis.call('SET', cap.marker, int(b) .. ' ' .. int(at), 'PX', ttl((b + 2) * cap.window - now))
  markers[cap.marker] = { b, at }
  local last = b
  for k in pairs(state) do
    if k > last then
      last = k
    end
  end
  redis.call('PEXPIRE', cap.key, ttl((last + 2) * cap.window - now))
end

local function reply(kind, chosen, reserved_at, entries, previous)
  return { now, at, kind, chosen, maybe(reserved_at), entries, previous or {} }
end

-- Housekeeping first, like MemoryCounterStore._live: drop what left every window before now.
local trimmed = {}
for _, option in ipairs(options) do
  for _, cap in ipairs(option.caps) do
    if cap.kind == 'c' then
      counter(cap)
    else
      local tag = cap.key .. '|' .. int(cap.window)
      if not trimmed[tag] then
        trimmed[tag] = true
        redis.call('ZREMRANGEBYSCORE', cap.key, '-inf', int(now - cap.window))
      end
    end
  end
end

if mode == 'U' then
  local option = options[1]
  for c, cap in ipairs(option.caps) do
    local score = ARGV[a + c - 1]
    if cap.kind ~= 'z' then
      return redis.error_reply('undo supports sorted-set caps only')
    elseif score == '' then
      redis.call('ZREM', cap.key, member)
    else
      redis.call('ZADD', cap.key, score, member)
    end
  end
  return reply(0, -1, nil, { { 0, false, usages(option) } })
elseif mode == 'C' then
  local entries, any = {}, false
  for o, option in ipairs(options) do
    if holds(option) then
      any = true
      entries[o] = { 1, score_of(option.caps[1]), usages(option) }
    else
      entries[o] = { 0, false, {} }
    end
  end
  if any or not eval_ok then
    return reply(2, -1, nil, entries)
  end
elseif mode == 'F' or mode == 'D' then
  for o, option in ipairs(options) do
    if option.eligible and holds(option) then
      return reply(1, o - 1, score_of(option.caps[1]), { { 1, false, usages(option) } })
    end
  end
  if mode == 'D' then
    return reply(0, -1, nil, {})
  end
end

local evaluated = {}
for o, option in ipairs(options) do
  local retry_at = nil
  for _, cap in ipairs(option.caps) do
    local when = refusal(cap)
    if when and (retry_at == nil or when > retry_at) then
      retry_at = when
    end
  end
  if retry_at ~= nil or not option.eligible then
    evaluated[#evaluated + 1] = { 0, maybe(retry_at), usages(option) }
  else
    if dry_run then
      evaluated[#evaluated + 1] = { 1, false, usages(option) }
      return reply(0, o - 1, nil, evaluated)
    end
    local previous = {}
    for c, cap in ipairs(option.caps) do
      previous[c] = maybe(score_of(cap))
    end
    for _, cap in ipairs(option.caps) do
      record(cap)
    end
    evaluated[#evaluated + 1] = { 1, false, usages(option) }
    return reply(0, o - 1, at, evaluated, previous)
  end
end
return reply(0, -1, nil, evaluated)
