--[[ reserve.lua: check every cap of the candidate options and reserve the first option whose caps
all have room, or with defer option 1 at the earliest instant it has room, in one atomic step
(Redis runs a script without interleaving other commands). The semantics are those of
counters/base.py; counters/memory.py is the reference.

Clock and units
  Every instant, score and window is a whole number of MILLISECONDS (epoch ms for instants), as in
  counters/base.py (`to_ms`): the caller rounds `at` and windows, now = redis.call('TIME') rounded
  to the nearest ms. Integers below 2^53 are exact in Lua numbers and in sorted-set scores, so the
  arithmetic (`at - window`, `score + window`) is exact; replies carry integers (false = absent).

Key schema (names built by counters/redis_codec.py; <prefix> is configurable, {..} is the Cluster hash tag)
  <prefix>:{u:<user>}:cap:<cap>      ZSET   member = message id, score = planned send instant
  <prefix>:{g}:cap:<cap>             ZSET   the same for a global cap (shared by all users)
  <prefix>:{g}:ctr:<cap>             HASH   sliding-window counter of a high-volume global cap:
                                            field = bucket floor(t / window), value = count
  <prefix>:{g}:ctr:<cap>:m:<member>  STRING "<bucket> <score>": this message is counted in bucket
  An entry scored <= now - window counts nowhere (MemoryCounterStore drops it): counting at t uses
  scores > max(t, now) - window, so stale entries are only removed when a call records into the set
  (and only if there are some). A sorted set expires when its latest entry leaves the window
  (PEXPIREAT latest + window, set only when a record moves the latest entry later; the expiry is
  never earlier than that). Counter buckets drop once they stop weighing (2 windows after they
  start); hash and marker expire at that instant.

Sliding-window counter (approximate, like `limits`' sliding window counter): at instant t in
  bucket b with fraction f = t / window - b, the count is count[b-1] * (1 - f) + count[>= b].
  `used` is its ceiling, the cap is full when used >= limit, retry_at solves the weighted count for
  the first instant (rounded up to a ms) it drops to limit - 1. reset_at is when the oldest
  weighing bucket stops weighing. A deferred entry is counted in the bucket of its instant.

Cost: a small sorted-set cap (limit <= SMALL_LIMIT holding <= MAX_ROWS entries) is read with ONE
  ZRANGE; everything (count, retry instant, repeat, usages, gaps, stale entries, latest entry) is
  derived from those rows. Recording adds ZADD, plus PEXPIREAT / ZREMRANGEBYSCORE only when
  needed. Larger sets use ZCOUNT / ZSCORE / ZRANGEBYSCORE ... LIMIT (bounded work, whatever the
  set size).

Code: ONE path for every mode, option and cap, in this order: the caps (read in place from the
  spec), the earliest free instant, reading a cap (a small set's rows, the member's score), the
  sliding-window counters (made only when the request has one), the per-option steps (holds,
  option_refusal, push_usages, record; each takes a cap as it is: a small set's rows, a larger set
  with commands, a counter's buckets), the reply, then the modes. The common call (mode "F" over a
  user's small caps) runs the same code as every other: there is no separate fast path to keep in
  step. Per call, Lua makes every function and table anew: the code keeps both few (see Caps).

KEYS  every key the call may touch, each once; caps name them by 1-based index.
ARGV
  1  member     message id
  2  at         planned send instant (ms); "" means now
  3  ctl        char 1 mode, char 2 dry_run ("1" check only), char 3 eval_ok (mode "C"), then one
                char per option: "1" may be chosen, "0" reported only (never chosen nor recorded
                by the evaluation); no char = "1"
  4  spec       the options' caps, binary (struct, big-endian): n_options (uint8), n_caps of each
                option (uint8 each), then per cap in order: kind (uint8 "z" sorted set | "c"
                counter), key index (uint16), limit (double), window ms (double), marker key index
                (uint16, 0 for "z"). Built once per options tuple by counters/redis_codec.py.
  5  defer      optional: "" none; "a" when no option is chosen, record option 1 at its retry_at;
                "m<floor>" record option 1 at the earliest instant >= floor all its caps have room
  6  not_after  optional: "" or the latest instant (ms) a deferral may take
  7  now        optional: "" or the request clock (ms): the instant taken as now instead of TIME.
                Expiry instants (PEXPIREAT) are shifted by TIME - now, so stored state lives as
                long in real time as it would have without the override
  8+ restore    mode "U": one per cap of option 1, its former score ("" = the member was absent)
  modes  "F" repeat check, then evaluate (then defer): the whole contract in one call
         "C" tell which options hold the member in all their caps (with score and usages); when none
             does and eval_ok, evaluate like "F" (then defer)
         "D" repeat check only: never evaluates      "E" evaluate only (then defer)
         "M" defer only (no repeat check, no evaluation)
         "U" undo (cluster: the other slot group refused): restore option 1's former scores

Reply  a flat array: now, at, kind, chosen, reserved_at, defer_state, defer_at, then
  kind 0 evaluated  (chosen 0-based or -1): the evaluated options in order, up to and including the
                    chosen one, each: allowed 0|1, retry_at, then used, reset_at per cap
  kind 1 repeat     chosen holds the member everywhere: its 1, false, usages
  kind 2 candidates (mode "C") per option: holds 0|1, score of its first cap, usages if it holds
  then n_previous, previous...: when this call recorded an option, each of its caps' score before
    (false = absent), the input of a later mode "U"
  then, when defer_state is 1 (option 1 recorded at defer_at), option 1's usages at defer_at.
  defer_state 0 = no deferral asked or possible, 1 = recorded, 2 = refused (defer_at is the
  earliest instant, after not_after). Instants in ms, false = absent.
]]

local member = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000 + 0.5)
local skew = 0 -- real time minus the request clock: added to every absolute expiry
if ARGV[7] and ARGV[7] ~= '' then
  local real = now
  now = tonumber(ARGV[7])
  skew = real - now
end
local at = now
if ARGV[2] ~= '' then
  at = tonumber(ARGV[2])
end
local ctl = ARGV[3]
local mode = string.sub(ctl, 1, 1)
local dry_run = string.sub(ctl, 2, 2) == '1'
local eval_ok = string.sub(ctl, 3, 3) == '1'
local defer = ARGV[5] or ''
local not_after = nil
if ARGV[6] and ARGV[6] ~= '' then
  not_after = tonumber(ARGV[6])
end
-- An integer as a command argument (Lua's own tostring switches to exponents above 1e14).
local fmt = string.format

local spec = ARGV[4]
local n_options = string.byte(spec, 1)
local sizes, total = { string.byte(spec, 2, 1 + n_options) }, 0
for o = 1, n_options do
  total = total + sizes[o]
end
local fields = { struct.unpack('>' .. string.rep('BHddH', total), spec, 2 + n_options) }

-- Caps -------------------------------------------------------------------------------------------
-- Cap j (1-based over all options, in order) is read in place from `fields`:
--   fields[5 * j - 4]  kind: 99 ("c") a sliding-window counter, else ("z") a sorted set
--   fields[5 * j - 3]  its key's index in KEYS     fields[5 * j - 2]  limit
--   fields[5 * j - 1]  window (ms)                 fields[5 * j]      a counter's marker key index
-- Option o's caps are j = ends[o - 1] + 1 .. ends[o]; `sliding and fields[5 * j - 4] == 99` tells
-- a counter (`sliding` is nil when the request has none). No table per cap, and literal offsets
-- rather than named ones: every allocation costs, and so does every local a function captures
-- (an upvalue to find each time the function is made, i.e. on every call), the more so as a lone
-- call runs on cold caches. What is read from Redis is cached per key index (options may share a
-- cap).
local ends, has_counters = { [0] = 0 }, false
for j = 1, total do
  if fields[5 * j - 2] < 1 then
    return redis.error_reply('cap limit must be >= 1')
  end
  has_counters = has_counters or fields[5 * j - 4] == 99
end
for o = 1, n_options do
  ends[o] = ends[o - 1] + sizes[o]
end
local all_eligible = #ctl <= 3 -- else ARGV 3 has a flag per option: "0" = never chosen

-- Earliest free instant, gaps included (counters/base.py `has_room_ms`, `earliest_free_ms`) --------
-- A cap here is { s = the other members' live scores, limit = , window = }. There is room at t
-- when each window holding t, (y - window, y] for y in [t, t + window), holds fewer than `limit`
-- of them: checked at y = t and at each entry in [t, t + window), where counts go up.
local function full_at(scores, lim, w, y)
  local low, c = math.max(y, now) - w, 0
  for i = 1, #scores do
    if scores[i] > low and scores[i] <= y then
      c = c + 1
    end
  end
  return c >= lim
end

local function room_in_all(gaps, t)
  for _, g in ipairs(gaps) do
    local ss = g.s
    if full_at(ss, g.limit, g.window, t) then
      return false
    end
    for i = 1, #ss do
      if ss[i] >= t and ss[i] < t + g.window and full_at(ss, g.limit, g.window, ss[i]) then
        return false
      end
    end
  end
  return true
end

-- The first instant >= t every cap has room (nil: t itself): t or an instant an entry leaves.
local function earliest_free(gaps, t)
  if room_in_all(gaps, t) then
    return nil
  end
  local leaving = {}
  for _, g in ipairs(gaps) do
    for i = 1, #g.s do
      if g.s[i] + g.window > t then
        leaving[#leaving + 1] = g.s[i] + g.window
      end
    end
  end
  table.sort(leaving)
  for _, when in ipairs(leaving) do
    if room_in_all(gaps, when) then
      return when
    end
  end
end

-- Reading a cap ----------------------------------------------------------------------------------

-- The whole set of a small sorted-set cap (limit <= SMALL_LIMIT, at most MAX_ROWS entries), read
-- with ONE ZRANGE: { member, score, member, score, ... } by ascending score, kept up to date by
-- `record`. false: a larger cap or set, read with bounded commands instead (ZCOUNT, ZSCORE,
-- ZRANGEBYSCORE ... LIMIT). Per key index.
local rows_at = {}
local function rows(j)
  local k = fields[5 * j - 3]
  local r = rows_at[k]
  if r == nil then
    local SMALL_LIMIT, MAX_ROWS = 32, 64
    local ROWS_ARG = '64' -- MAX_ROWS as a ZRANGE argument (a Lua number is formatted on every call)
    r = false
    if fields[5 * j - 2] <= SMALL_LIMIT then
      r = redis.call('ZRANGE', KEYS[k], '0', ROWS_ARG, 'WITHSCORES')
      if #r > 2 * MAX_ROWS then
        r = false
      else
        for i = 2, #r, 2 do
          r[i] = tonumber(r[i])
        end
      end
    end
    rows_at[k] = r
  end
  return r
end

-- The sliding-window counters' operations { entry, refusal, usage, record, remove }, made below
-- when the request has a counter cap.
local sliding = nil

-- The member's score in cap j if it counts there (nil when absent or stale). A sorted set read
-- with commands gives it once per key (`owns`: maybe stale, false = absent); `record` keeps that
-- and the rows current.
local owns = {}
local function score_of(j)
  if sliding and fields[5 * j - 4] == 99 then
    local _, score = sliding.entry(j)
    return score
  end
  local s = false
  local r = rows(j)
  if r then
    for i = 1, #r, 2 do
      if r[i] == member then
        s = r[i + 1]
        break
      end
    end
  else
    local k = fields[5 * j - 3]
    s = owns[k]
    if s == nil then
      local z = redis.call('ZSCORE', KEYS[k], member)
      s = z and tonumber(z) or false
      owns[k] = s
    end
  end
  if s and s > now - fields[5 * j - 1] then
    return s
  end
  return nil
end

-- Sliding-window counters (defined only when the request has one) -------------------------------

if has_counters then
  local EPSILON = 1e-9 -- absorbs rounding in the counter's weighted sum (a count)
  local MS_EPSILON = 1e-6 -- and in an instant computed from a fraction of a window (ms)

  -- Counter state, loaded once per key (dropping buckets that no longer weigh): bucket -> count.
  local counts_at = {}
  local function state_of(j)
    local k = fields[5 * j - 3]
    local state = counts_at[k]
    if state then
      return state
    end
    state = {}
    local stale = {}
    local flat = redis.call('HGETALL', KEYS[k])
    for i = 1, #flat, 2 do
      local b = tonumber(flat[i])
      if (b + 2) * fields[5 * j - 1] <= now then
        stale[#stale + 1] = flat[i]
      else
        state[b] = tonumber(flat[i + 1])
      end
    end
    if #stale > 0 then
      redis.call('HDEL', KEYS[k], unpack(stale))
    end
    counts_at[k] = state
    return state
  end

  -- The member's counter entry: bucket, score (nil when absent). Cached per marker key.
  local markers = {}
  local function marker_entry(j)
    local key = KEYS[fields[5 * j]]
    local entry = markers[key]
    if entry == nil then
      entry = false
      local value = redis.call('GET', key)
      if value then
        local b, s = string.match(value, '^(%S+) (%S+)$')
        entry = { tonumber(b), tonumber(s) }
      end
      markers[key] = entry
    end
    if entry then
      return entry[1], entry[2]
    end
    return nil, nil
  end

  -- Weighted counter at t, leaving one entry out of bucket `skip`; also the oldest weighing bucket.
  local function weighted(j, t, skip)
    local w = fields[5 * j - 1]
    local b = math.floor(t / w)
    local f = t / w - b
    local sum, oldest = 0, nil
    for k, count in pairs(state_of(j)) do
      if k == skip then
        count = count - 1
      end
      if count > 0 and k >= b - 1 then
        sum = sum + (k == b - 1 and count * (1 - f) or count)
        if oldest == nil or k < oldest then
          oldest = k
        end
      end
    end
    return sum, oldest
  end

  -- First instant >= t where the weighted count (without `skip`) is at most limit - 1. The count is
  -- continuous and non-increasing in time, linear inside a bucket: walk buckets until it fits.
  local function counter_retry_at(j, t, skip)
    local w = fields[5 * j - 1]
    local counts, later = {}, 0
    local b = math.floor(t / w)
    for k, count in pairs(state_of(j)) do
      if k == skip then
        count = count - 1
      end
      if count > 0 then
        counts[k] = count
        if k >= b then
          later = later + count
        end
      end
    end
    local room = fields[5 * j - 2] - 1
    while later > room do
      later = later - (counts[b] or 0)
      b = b + 1
    end
    local previous = counts[b - 1] or 0
    local f = 0
    if previous > 0 then
      f = math.max(0, 1 - (room - later) / previous)
    end
    return math.max(t, b * w + math.ceil(f * w - MS_EPSILON))
  end

  local function c_refusal(j, t)
    local skip = marker_entry(j)
    if math.ceil(weighted(j, t, skip) - EPSILON) < fields[5 * j - 2] then
      return nil
    end
    return counter_retry_at(j, t, skip)
  end

  local function c_usage(j, t)
    local sum, oldest = weighted(j, t, nil)
    return math.max(0, math.ceil(sum - EPSILON)), oldest and (oldest + 2) * fields[5 * j - 1] or false
  end

  -- Takes the member's count out of its bucket (its marker stays: set again or deleted after).
  local function forget(j)
    local state = state_of(j)
    local old = marker_entry(j)
    if old and state[old] then
      state[old] = state[old] - 1
      if state[old] <= 0 then
        state[old] = nil
        redis.call('HDEL', KEYS[fields[5 * j - 3]], fmt('%d', old))
      else
        redis.call('HINCRBY', KEYS[fields[5 * j - 3]], fmt('%d', old), -1)
      end
    end
  end

  local function c_record(j, t)
    local key, marker, w = KEYS[fields[5 * j - 3]], KEYS[fields[5 * j]], fields[5 * j - 1]
    local state = state_of(j)
    forget(j) -- counted before (a partial record, a deferral moved): never count it twice
    local b = math.floor(t / w)
    state[b] = (state[b] or 0) + 1
    redis.call('HINCRBY', key, fmt('%d', b), 1)
    local ttl = math.max(1, (b + 2) * w - now)
    redis.call('SET', marker, fmt('%d', b) .. ' ' .. fmt('%d', t), 'PX', fmt('%d', ttl))
    markers[marker] = { b, t }
    local last = b
    for k in pairs(state) do
      if k > last then
        last = k
      end
    end
    redis.call('PEXPIRE', key, fmt('%d', math.max(1, (last + 2) * w - now)))
  end

  -- Takes the member out of the counter altogether: its count and its marker.
  local function c_remove(j)
    local marker = KEYS[fields[5 * j]]
    forget(j)
    redis.call('DEL', marker)
    markers[marker] = false
  end

  sliding = {
    entry = marker_entry, refusal = c_refusal, usage = c_usage, record = c_record, remove = c_remove,
  }
end

-- Options: option o's caps are j = ends[o - 1] + 1 .. ends[o] -------------------------------------

-- Whether option o holds the member in all its caps (never when it has none).
local function holds(o)
  if ends[o] == ends[o - 1] then
    return false
  end
  for j = ends[o - 1] + 1, ends[o] do
    if score_of(j) == nil then
      return false
    end
  end
  return true
end

-- The first instant >= t every cap of option o has room (nil: at t). Where every cap is a sorted
-- set with limit <= GAP_LIMIT and at most GAP_ROWS live entries (counters/base.py: gaps are looked
-- for only there), `earliest_free` over their live entries, the member's left out, ascending (gaps
-- included); else the latest of the caps' own instants (a cap has room once enough entries left
-- the window).
local function option_refusal(o, t)
  local GAP_LIMIT, GAP_ROWS = 32, 64 -- counters/base.py: caps searched for gaps
  local gaps = {}
  for j = ends[o - 1] + 1, ends[o] do
    if sliding and fields[5 * j - 4] == 99 or fields[5 * j - 2] > GAP_LIMIT then
      gaps = nil
      break
    end
    local stale, ss = now - fields[5 * j - 1], {}
    local r = rows(j)
    if r then
      for i = 2, #r, 2 do
        if r[i] > stale and r[i - 1] ~= member then
          ss[#ss + 1] = r[i]
        end
      end
    else
      local bound = '(' .. fmt('%d', stale)
      local flat = redis.call(
        'ZRANGEBYSCORE', KEYS[fields[5 * j - 3]], bound, '+inf', 'WITHSCORES', 'LIMIT', 0, GAP_ROWS + 2
      )
      for i = 2, #flat, 2 do
        if flat[i - 1] ~= member then
          ss[#ss + 1] = tonumber(flat[i])
        end
      end
    end
    if #ss > GAP_ROWS then
      gaps = nil
      break
    end
    gaps[#gaps + 1] = { s = ss, limit = fields[5 * j - 2], window = fields[5 * j - 1] }
  end
  if gaps then
    return earliest_free(gaps, t)
  end
  local retry_at = nil
  for j = ends[o - 1] + 1, ends[o] do
    local when -- the first instant >= t cap j has room for the member, nil = at t
    if sliding and fields[5 * j - 4] == 99 then
      when = sliding.refusal(j, t)
    else -- sorted set: the (count - limit + 1)-th live entry, the member's left out, leaves
      local lim, w = fields[5 * j - 2], fields[5 * j - 1]
      local low = math.max(t, now) - w
      local r = rows(j)
      if r then
        local c = 0
        for i = 2, #r, 2 do
          if r[i] > low and r[i - 1] ~= member then
            c = c + 1
          end
        end
        local wanted = c - lim + 1 -- ascending
        for i = 2, wanted > 0 and #r or 0, 2 do
          if r[i] > low and r[i - 1] ~= member then
            wanted = wanted - 1
            if wanted == 0 then
              when = r[i] + w
              break
            end
          end
        end
      else -- counts.py `retry_at_ms` with ZCOUNT and two rows of ZRANGEBYSCORE ... LIMIT
        local key, bound = KEYS[fields[5 * j - 3]], '(' .. fmt('%d', low)
        local counted = redis.call('ZCOUNT', key, bound, '+inf')
        local own = score_of(j) -- nil when stale: then it is out of the window (low >= now - window)
        local own_in = own and own > low
        if own_in then
          counted = counted - 1
        end
        if counted >= lim then
          -- the (counted - limit)-th (0-based) score but the member's: rows k and k + 1 of them
          local found =
            redis.call('ZRANGEBYSCORE', key, bound, '+inf', 'WITHSCORES', 'LIMIT', counted - lim, 2)
          if own_in and (found[1] == member or (found[3] ~= member and own <= tonumber(found[2]))) then
            when = tonumber(found[4]) + w
          else
            when = tonumber(found[2]) + w
          end
        end
      end
    end
    if when and (retry_at == nil or when > retry_at) then
      retry_at = when
    end
  end
  return retry_at
end

local recorded = {} -- key index -> true once this call recorded the member there

-- Appends `used, reset_at` at t of every cap of option o to `out`: the entries scored after
-- max(t, now) - window, and what this call recorded.
local function push_usages(out, o, t)
  for j = ends[o - 1] + 1, ends[o] do
    local n = #out
    if sliding and fields[5 * j - 4] == 99 then
      out[n + 1], out[n + 2] = sliding.usage(j, t)
    else
      local k, w = fields[5 * j - 3], fields[5 * j - 1]
      local low, mine = math.max(t, now) - w, recorded[k]
      local r = rows(j)
      local used, first = 0, nil
      if r then
        for i = 2, #r, 2 do
          local s = r[i]
          if s > low or (mine and r[i - 1] == member) then
            used = used + 1
            if first == nil or s < first then
              first = s
            end
          end
        end
      else
        local bound = '(' .. fmt('%d', low)
        used = redis.call('ZCOUNT', KEYS[k], bound, '+inf')
        local row = redis.call('ZRANGEBYSCORE', KEYS[k], bound, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
        first = row[2] and tonumber(row[2])
        if mine then
          local own = owns[k]
          if own <= low then
            used = used + 1
          end
          if first == nil or own < first then
            first = own
          end
        end
      end
      out[n + 1], out[n + 2] = used, first and first + w or false
    end
  end
end

-- Records the member at t in every cap of option o; returns the caps' scores before. A sorted set
-- loses what left every window (MemoryCounterStore._live) and expires when its latest entry leaves
-- the window.
local function record(o, t)
  local previous = {}
  for j = ends[o - 1] + 1, ends[o] do
    previous[#previous + 1] = score_of(j) or false
  end
  for j = ends[o - 1] + 1, ends[o] do
    if sliding and fields[5 * j - 4] == 99 then
      sliding.record(j, t)
    else
      local k, w = fields[5 * j - 3], fields[5 * j - 1]
      local key, stale, latest = KEYS[k], now - w, nil
      local r = rows(j)
      if r then
        if r[2] and r[2] <= stale then
          redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt('%d', stale))
        end
        local kept, placed = {}, false
        for i = 1, #r, 2 do
          local s = r[i + 1]
          if s > stale then
            latest = s -- what is left of the set (the member's old entry too) lives until then
            if r[i] ~= member then
              if not placed and s > t then
                kept[#kept + 1], kept[#kept + 2], placed = member, t, true
              end
              kept[#kept + 1], kept[#kept + 2] = r[i], s
            end
          end
        end
        if not placed then
          kept[#kept + 1], kept[#kept + 2] = member, t
        end
        rows_at[k] = kept
      else
        redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt('%d', stale))
        local top = redis.call('ZRANGE', key, '-1', '-1', 'WITHSCORES')
        latest = top[2] and tonumber(top[2])
      end
      redis.call('ZADD', key, fmt('%d', t), member)
      if latest == nil or t > latest then -- else the key already lives past t + window
        redis.call('PEXPIREAT', key, fmt('%d', math.max(t + w, now + 1) + skew))
      end
      if not r then
        owns[k] = t
      end
      recorded[k] = true
    end
  end
  return previous
end

-- The reply: the 7 header fields, then the entries, appended as they are found.
local out = { now, at, 0, -1, false, 0, false }

local function reply(previous, deferred)
  local n = previous and #previous or 0
  out[#out + 1] = n
  for i = 1, n do
    out[#out + 1] = previous[i]
  end
  if deferred then
    push_usages(out, 1, out[7])
  end
  return out
end

-- The modes -------------------------------------------------------------------------------------

if mode == 'U' then
  for j = 1, ends[1] do -- option 1's caps, in order: ARGV[7 + j] is cap j's former score
    local score = tonumber(ARGV[7 + j])
    local k, w = fields[5 * j - 3], fields[5 * j - 1]
    if sliding and fields[5 * j - 4] == 99 then
      if score then
        sliding.record(j, score)
      else
        sliding.remove(j)
      end
    elseif score == nil or score <= now - w then
      redis.call('ZREM', KEYS[k], member)
    else
      redis.call('ZADD', KEYS[k], fmt('%d', score), member)
      local ttl = redis.call('PTTL', KEYS[k])
      if ttl < 0 or now + ttl < score + w then
        redis.call('PEXPIREAT', KEYS[k], fmt('%d', score + w + skew))
      end
    end
    rows_at[k], owns[k] = nil, nil
  end
  out[#out + 1], out[#out + 2] = 0, false
  push_usages(out, 1, at)
  return reply()
elseif mode == 'C' then
  local any = false
  for o = 1, n_options do
    if holds(o) then
      any = true
      out[#out + 1], out[#out + 2] = 1, score_of(ends[o - 1] + 1)
      push_usages(out, o, at)
    else
      out[#out + 1], out[#out + 2] = 0, false
    end
  end
  if any or not eval_ok then
    out[3] = 2
    return reply()
  end
  for i = #out, 8, -1 do -- none holds: evaluate instead
    out[i] = nil
  end
elseif mode == 'F' or mode == 'D' then
  for o = 1, n_options do
    if (all_eligible or string.sub(ctl, 3 + o, 3 + o) ~= '0') and holds(o) then
      out[3], out[4], out[5] = 1, o - 1, score_of(ends[o - 1] + 1)
      out[#out + 1], out[#out + 2] = 1, false
      push_usages(out, o, at)
      return reply()
    end
  end
  if mode == 'D' then
    return reply()
  end
end

local first_retry = nil -- option 1's retry instant at `at`
if mode ~= 'M' then
  for o = 1, n_options do
    local retry_at = option_refusal(o, at)
    if o == 1 then
      first_retry = retry_at
    end
    if retry_at ~= nil or not (all_eligible or string.sub(ctl, 3 + o, 3 + o) ~= '0') then
      out[#out + 1], out[#out + 2] = 0, retry_at or false
      push_usages(out, o, at)
    else
      out[4] = o - 1
      out[#out + 1], out[#out + 2] = 1, false
      if dry_run then
        push_usages(out, o, at)
        return reply()
      end
      local previous = record(o, at)
      out[5] = at
      push_usages(out, o, at)
      return reply(previous)
    end
  end
end

-- No option chosen: defer option 1 (base.py point 3).
if defer == '' or dry_run or n_options == 0 then
  return reply()
end
local when = first_retry or at -- "a": option 1's retry instant, found above
if defer ~= 'a' then -- "m<floor>": option 1's earliest instant >= floor
  local floor = tonumber(string.sub(defer, 2))
  when = option_refusal(1, floor) or floor
end
out[7] = when
if not_after and when > not_after then
  out[6] = 2
  return reply()
end
out[6] = 1
return reply(record(1, when), true)
