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
  ZRANGE; everything (count, retry instant, repeat, usages, stale entries, latest entry) is derived
  from those rows. Recording adds ZADD, plus PEXPIREAT / ZREMRANGEBYSCORE only when needed. Larger
  sets use ZCOUNT / ZSCORE / ZRANGEBYSCORE ... LIMIT (bounded work, whatever the set size).
  A mode "F" call whose caps are all small sorted sets (the common one: a user's caps) runs the
  "fast path" below: the same steps with less Lua work per call.

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
local SMALL_LIMIT, MAX_ROWS = 32, 64
local GAP_LIMIT, GAP_ROWS = 32, 64 -- counters/base.py: caps searched for gaps (independent of the above)
local ROWS_ARG = '64' -- MAX_ROWS as a ZRANGE argument (a Lua number is formatted on every call)
local EPSILON = 1e-9 -- absorbs rounding in the counter's weighted sum (a count)
local MS_EPSILON = 1e-6 -- and in an instant computed from a fraction of a window (ms)

-- An integer as a command argument (Lua's own tostring switches to exponents above 1e14).
local fmt = string.format

local spec = ARGV[4]
local n_options = string.byte(spec, 1)
local sizes, total = { string.byte(spec, 2, 1 + n_options) }, 0
for o = 1, n_options do
  total = total + sizes[o]
end
local fields = { struct.unpack('>' .. string.rep('BHddH', total), spec, 2 + n_options) }

-- Earliest free instant, gaps included (counters/base.py `has_room_ms`, `earliest_free_ms`) --------
-- A cap here is { s = the other members' live scores, limit = , window = }. There is room at t
-- when each window holding t, (y - window, y] for y in [t, t + window), holds fewer than `limit`
-- of them: checked at y = t and at each entry in [t, t + window), where counts go up.
local function full_at(scores, limit, window, y)
  local low, c = math.max(y, now) - window, 0
  for i = 1, #scores do
    if scores[i] > low and scores[i] <= y then
      c = c + 1
    end
  end
  return c >= limit
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

-- Fast path: mode "F" over small sorted-set caps ------------------------------------------------
-- The common request (mode "F" without eligibility flags, defer "a" or none, only sorted-set caps
-- with limit <= SMALL_LIMIT, e.g. a user's caps) takes the same steps as the general code below,
-- written for that case: each set is read whole with ONE ZRANGE into a flat array, with no per-cap
-- tables and few closures (every allocation costs, the more so as a lone call runs on cold caches).
-- A set holding more than MAX_ROWS entries sends the call to the general code before anything is
-- written. Cap j (1-based over all options) is fields[5j-4 .. 5j] (kind, key index, limit,
-- window, marker); option o's caps are j = ends[o - 1] + 1 .. ends[o].
local fast = mode == 'F' and #ctl <= 3 and (defer == '' or defer == 'a')
for f = 1, fast and 5 * total or 0, 5 do
  if fields[f] == 99 or fields[f + 2] < 1 or fields[f + 2] > SMALL_LIMIT then
    fast = false
    break
  end
end
if fast then
  local ends, rows, recorded = { [0] = 0 }, {}, {}
  for o = 1, n_options do
    ends[o] = ends[o - 1] + sizes[o]
  end

  -- The rows of cap j's set: { member, score, member, score, ... } by ascending score (view),
  -- read once per key; false when the set is too large to read whole.
  local function rows_of(j)
    local k = fields[5 * j - 3]
    local r = rows[k]
    if r == nil then
      r = redis.call('ZRANGE', KEYS[k], '0', ROWS_ARG, 'WITHSCORES')
      if #r > 2 * MAX_ROWS then
        r = false
      else
        for i = 2, #r, 2 do
          r[i] = tonumber(r[i])
        end
      end
      rows[k] = r
    end
    return r
  end

  -- The member's score in cap j if it counts there (score_of), false when absent or stale.
  local function score_of(j)
    local r = rows_of(j)
    for i = 1, #r, 2 do
      if r[i] == member then
        return r[i + 1] > now - fields[5 * j - 1] and r[i + 1]
      end
    end
    return false
  end

  -- Appends `used, reset_at` at t of every cap of option o to out (z_usage).
  local function push_usages(out, o, t)
    for j = ends[o - 1] + 1, ends[o] do
      local k, window = fields[5 * j - 3], fields[5 * j - 1]
      local r, mine = rows[k], recorded[k]
      local low, used, oldest = math.max(t, now) - window, 0, nil
      for i = 2, #r, 2 do
        local s = r[i]
        if s > low or (mine and r[i - 1] == member) then
          used = used + 1
          if oldest == nil or s < oldest then
            oldest = s
          end
        end
      end
      local n = #out
      out[n + 1], out[n + 2] = used, oldest and oldest + window or false
    end
  end

  -- Records the member at t in every cap of option o (z_record); returns the caps' scores before.
  local function record(o, t)
    local previous = {}
    for j = ends[o - 1] + 1, ends[o] do
      previous[#previous + 1] = score_of(j)
    end
    for j = ends[o - 1] + 1, ends[o] do
      local k, window = fields[5 * j - 3], fields[5 * j - 1]
      local r, stale = rows[k], now - window
      if r[2] and r[2] <= stale then -- drop what left every window (MemoryCounterStore._live)
        redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', fmt('%d', stale))
      end
      local kept, latest, placed = {}, nil, false
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
      rows[k], recorded[k] = kept, true
      redis.call('ZADD', KEYS[k], fmt('%d', t), member)
      if latest == nil or t > latest then -- else the key already lives past t + window
        redis.call('PEXPIREAT', KEYS[k], fmt('%d', math.max(t + window, now + 1) + skew))
      end
    end
    return previous
  end

  -- The reply as the general code's `reply`: out, then n_previous and previous, then with a
  -- deferral option 1's usages at defer_at.
  local out = { now, at, 0, -1, false, 0, false }
  local function reply(previous, deferred)
    local n = #out
    out[n + 1] = previous and #previous or 0
    for i = 1, previous and #previous or 0 do
      out[n + 1 + i] = previous[i]
    end
    if deferred then
      push_usages(out, 1, out[7])
    end
    return out
  end

  for o = 1, n_options do -- a repeat: the first option holding the member in all its caps
    local held = ends[o] > ends[o - 1]
    for j = ends[o - 1] + 1, ends[o] do
      if not rows_of(j) then
        fast = false
        break
      elseif not score_of(j) then
        held = false
        break
      end
    end
    if not fast then
      break
    elseif held then
      out[3], out[4], out[5], out[8], out[9] = 1, o - 1, score_of(ends[o - 1] + 1), 1, false
      push_usages(out, o, at)
      return reply()
    end
  end

  -- Else the first option whose caps all have room at `at`; for a refused one the earliest
  -- instant they all have, gaps between planned entries included (z_earliest, over rows).
  local function earliest(o) -- option o's caps as `earliest_free` takes them, from the rows
    local gaps = {}
    for j = ends[o - 1] + 1, ends[o] do
      local r, ss = rows[fields[5 * j - 3]], {}
      for i = 2, #r, 2 do
        if r[i - 1] ~= member then
          ss[#ss + 1] = r[i]
        end
      end
      gaps[#gaps + 1] = { s = ss, limit = fields[5 * j - 2], window = fields[5 * j - 1] }
    end
    return earliest_free(gaps, at)
  end

  local first_retry = nil
  for o = 1, fast and n_options or 0 do
    for j = ends[o - 1] + 1, ends[o] do
      if not rows_of(j) then
        fast = false
        break
      end
    end
    if not fast then
      break
    end
    local retry_at = earliest(o)
    if o == 1 then
      first_retry = retry_at
    end
    local n = #out
    if retry_at then
      out[n + 1], out[n + 2] = 0, retry_at
      push_usages(out, o, at)
    else
      out[4], out[n + 1], out[n + 2] = o - 1, 1, false
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

  if fast then -- no option chosen: defer option 1 at its retry instant (defer "a")
    if defer == '' or dry_run or n_options == 0 then
      return reply()
    end
    out[7] = first_retry or at
    if not_after and out[7] > not_after then
      out[6] = 2
      return reply()
    end
    out[6] = 1
    return reply(record(1, out[7]), true)
  end
end

-- General path -----------------------------------------------------------------------------------

local options, has_counters = {}, false
local f = 1
for o = 1, n_options do
  local caps = {}
  for c = 1, sizes[o] do
    local kind, marker = fields[f] == 99 and 'c' or 'z', fields[f + 4]
    if fields[f + 2] < 1 then
      return redis.error_reply('cap limit must be >= 1')
    end
    caps[c] = { kind = kind, key = KEYS[fields[f + 1]], limit = fields[f + 2], window = fields[f + 3] }
    if kind == 'c' then
      caps[c].marker = KEYS[marker]
      has_counters = true
    end
    f = f + 5
  end
  options[o] = { caps = caps, eligible = string.sub(ctl, 3 + o, 3 + o) ~= '0' }
end

-- Sorted sets ---------------------------------------------------------------------------------

-- The whole set of a small cap, ascending: { m = members, s = scores }; false = read with commands.
local views = {}
local function view(cap)
  local v = views[cap.key]
  if v == nil then
    v = false
    if cap.limit <= SMALL_LIMIT then
      local flat = redis.call('ZRANGE', cap.key, '0', ROWS_ARG, 'WITHSCORES')
      if #flat <= 2 * MAX_ROWS then
        local ms, ss = {}, {}
        for i = 2, #flat, 2 do
          ms[i / 2] = flat[i - 1]
          ss[i / 2] = tonumber(flat[i])
        end
        v = { m = ms, s = ss }
      end
    end
    views[cap.key] = v
  end
  return v
end

local owns = {} -- key -> the member's score there (maybe stale), false = absent
local recorded = {} -- key -> true once this call recorded the member there
local function own_score(cap)
  local s = owns[cap.key]
  if s == nil then
    s = false
    local v = view(cap)
    if v then
      for i = 1, #v.m do
        if v.m[i] == member then
          s = v.s[i]
          break
        end
      end
    else
      local z = redis.call('ZSCORE', cap.key, member)
      if z then
        s = tonumber(z)
      end
    end
    owns[cap.key] = s
  end
  return s
end

-- First instant >= t the cap has room for the member (counts.py `retry_at_ms`), nil = at t.
local function z_refusal(cap, t)
  local low = math.max(t, now) - cap.window
  local v = view(cap)
  if v then
    local ms, ss, c = v.m, v.s, 0
    for i = 1, #ss do
      if ss[i] > low and ms[i] ~= member then
        c = c + 1
      end
    end
    if c < cap.limit then
      return nil
    end
    local wanted = c - cap.limit + 1 -- ascending, the member left out
    for i = 1, #ss do
      if ss[i] > low and ms[i] ~= member then
        wanted = wanted - 1
        if wanted == 0 then
          return ss[i] + cap.window
        end
      end
    end
  end
  local bound = '(' .. fmt('%d', low)
  local counted = redis.call('ZCOUNT', cap.key, bound, '+inf')
  local own = own_score(cap)
  local own_in = own and own > low
  if own_in then
    counted = counted - 1
  end
  if counted < cap.limit then
    return nil
  end
  -- the (counted - limit)-th (0-based) score but the member's: rows k and k + 1 of all of them
  local rows = redis.call('ZRANGEBYSCORE', cap.key, bound, '+inf', 'WITHSCORES', 'LIMIT', counted - cap.limit, 2)
  if own_in and (rows[1] == member or (rows[3] ~= member and own <= tonumber(rows[2]))) then
    return tonumber(rows[4]) + cap.window
  end
  return tonumber(rows[2]) + cap.window
end

-- used, reset_at at t: entries scored after max(t, now) - window, and what this call recorded.
local function z_usage(cap, t)
  local low = math.max(t, now) - cap.window
  local mine = recorded[cap.key]
  local v = view(cap)
  local used, first = 0, nil
  if v then
    for i = 1, #v.s do
      local s = v.s[i]
      if s > low or (mine and v.m[i] == member) then
        used = used + 1
        if first == nil or s < first then
          first = s
        end
      end
    end
  else
    local bound = '(' .. fmt('%d', low)
    used = redis.call('ZCOUNT', cap.key, bound, '+inf')
    local row = redis.call('ZRANGEBYSCORE', cap.key, bound, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    first = row[2] and tonumber(row[2])
    if mine then
      local own = owns[cap.key]
      if own <= low then
        used = used + 1
      end
      if first == nil or own < first then
        first = own
      end
    end
  end
  return used, first and first + cap.window or false
end

local function z_record(cap, t)
  local stale = now - cap.window
  local v = view(cap)
  local latest
  if v then
    local ms, ss = v.m, v.s
    if ss[1] and ss[1] <= stale then -- drop what left every window (MemoryCounterStore._live)
      redis.call('ZREMRANGEBYSCORE', cap.key, '-inf', fmt('%d', stale))
    end
    local keep_m, keep_s, placed = {}, {}, false
    for i = 1, #ss do
      if ss[i] > stale then
        latest = ss[i] -- what is left of the set (the member's old entry too) lives until then
      end
      if ss[i] > stale and ms[i] ~= member then
        if not placed and ss[i] > t then
          keep_m[#keep_m + 1], keep_s[#keep_s + 1], placed = member, t, true
        end
        keep_m[#keep_m + 1], keep_s[#keep_s + 1] = ms[i], ss[i]
      end
    end
    if not placed then
      keep_m[#keep_m + 1], keep_s[#keep_s + 1] = member, t
    end
    v.m, v.s = keep_m, keep_s
  else
    redis.call('ZREMRANGEBYSCORE', cap.key, '-inf', fmt('%d', stale))
    local top = redis.call('ZRANGE', cap.key, '-1', '-1', 'WITHSCORES')
    latest = top[2] and tonumber(top[2])
  end
  redis.call('ZADD', cap.key, fmt('%d', t), member)
  if latest == nil or t > latest then -- else the key already lives past t + window
    redis.call('PEXPIREAT', cap.key, fmt('%d', math.max(t + cap.window, now + 1) + skew))
  end
  owns[cap.key], recorded[cap.key] = t, true
end

-- Sliding-window counters (defined only when the request has one) ----------------------------

local marker_of, c_refusal, c_usage, c_record, c_forget, c_remove
if has_counters then
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
  marker_of = function(cap)
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

  -- Weighted counter at t, leaving one entry out of bucket `skip`; also the oldest weighing bucket.
  local function weighted(cap, t, skip)
    local b = math.floor(t / cap.window)
    local f = t / cap.window - b
    local total, oldest = 0, nil
    for k, count in pairs(counter(cap)) do
      if k == skip then
        count = count - 1
      end
      if count > 0 and k >= b - 1 then
        total = total + (k == b - 1 and count * (1 - f) or count)
        if oldest == nil or k < oldest then
          oldest = k
        end
      end
    end
    return total, oldest
  end

  -- First instant >= t where the weighted count (without `skip`) is at most limit - 1. The count is
  -- continuous and non-increasing in time, linear inside a bucket: walk buckets until it fits.
  local function counter_retry_at(cap, t, skip)
    local counts, later = {}, 0
    local b = math.floor(t / cap.window)
    for k, count in pairs(counter(cap)) do
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
    return math.max(t, b * cap.window + math.ceil(f * cap.window - MS_EPSILON))
  end

  c_refusal = function(cap, t)
    local skip = marker_of(cap)
    if math.ceil(weighted(cap, t, skip) - EPSILON) < cap.limit then
      return nil
    end
    return counter_retry_at(cap, t, skip)
  end

  c_usage = function(cap, t)
    local total, oldest = weighted(cap, t, nil)
    return math.max(0, math.ceil(total - EPSILON)), oldest and (oldest + 2) * cap.window or false
  end

  -- Takes the member's count out of its bucket (its marker stays: set again or deleted after).
  c_forget = function(cap)
    local state = counter(cap)
    local old = marker_of(cap)
    if old and state[old] then
      state[old] = state[old] - 1
      if state[old] <= 0 then
        state[old] = nil
        redis.call('HDEL', cap.key, fmt('%d', old))
      else
        redis.call('HINCRBY', cap.key, fmt('%d', old), -1)
      end
    end
  end

  c_record = function(cap, t)
    local state = counter(cap)
    c_forget(cap) -- counted before (a partial record, a deferral moved): never count it twice
    local b = math.floor(t / cap.window)
    state[b] = (state[b] or 0) + 1
    redis.call('HINCRBY', cap.key, fmt('%d', b), 1)
    redis.call('SET', cap.marker, fmt('%d', b) .. ' ' .. fmt('%d', t), 'PX', fmt('%d', math.max(1, (b + 2) * cap.window - now)))
    markers[cap.marker] = { b, t }
    local last = b
    for k in pairs(state) do
      if k > last then
        last = k
      end
    end
    redis.call('PEXPIRE', cap.key, fmt('%d', math.max(1, (last + 2) * cap.window - now)))
  end

  -- Takes the member out of the counter altogether: its count and its marker.
  c_remove = function(cap)
    c_forget(cap)
    redis.call('DEL', cap.marker)
    markers[cap.marker] = false
  end
end

-- Both kinds -------------------------------------------------------------------------------------

-- The member's score in a cap if it counts there (nil when absent or stale).
local function score_of(cap)
  if cap.kind == 'z' then
    local s = own_score(cap)
    if s and s > now - cap.window then
      return s
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

local function refusal(cap, t)
  if cap.kind == 'z' then
    return z_refusal(cap, t)
  end
  return c_refusal(cap, t)
end

-- The live entries (scored after now - window) of a cap with limit <= GAP_LIMIT, the member's
-- left out, ascending, as `earliest_free` takes them: false for a larger cap or more than
-- GAP_ROWS of them (counters/base.py GAP_LIMIT, GAP_ROWS: gaps are looked for only there).
local gap_caps = {}
local function gap_cap(cap)
  local g = gap_caps[cap.key]
  if g == nil then
    g = false
    if cap.kind == 'z' and cap.limit <= GAP_LIMIT then
      local flat = redis.call(
        'ZRANGEBYSCORE', cap.key, '(' .. fmt('%d', now - cap.window), '+inf', 'WITHSCORES', 'LIMIT', 0, GAP_ROWS + 2
      )
      local ss = {}
      for i = 2, #flat, 2 do
        if flat[i - 1] ~= member then
          ss[#ss + 1] = tonumber(flat[i])
        end
      end
      if #ss <= GAP_ROWS then
        g = { s = ss, limit = cap.limit, window = cap.window }
      end
    end
    gap_caps[cap.key] = g
  end
  return g
end

-- The first instant >= t every cap of the option has room (nil: at t): gaps included where
-- every cap is small (`earliest_free`), else the latest of the caps' own instants (a cap has
-- room once enough entries left the window).
local function option_refusal(option, t)
  local gaps = {}
  for _, cap in ipairs(option.caps) do
    local g = gap_cap(cap)
    if not g then
      gaps = nil
      break
    end
    gaps[#gaps + 1] = g
  end
  if gaps then
    return earliest_free(gaps, t)
  end
  local retry_at = nil
  for _, cap in ipairs(option.caps) do
    local when = refusal(cap, t)
    if when and (retry_at == nil or when > retry_at) then
      retry_at = when
    end
  end
  return retry_at
end

local function push2(out, x, y)
  local k = #out
  out[k + 1], out[k + 2] = x, y
end

-- Appends `used, reset_at` per cap of the option at t to `out`.
local function push_usages(out, option, t)
  for _, cap in ipairs(option.caps) do
    local used, reset
    if cap.kind == 'z' then
      used, reset = z_usage(cap, t)
    else
      used, reset = c_usage(cap, t)
    end
    push2(out, used, reset)
  end
end

-- Records the member at t in every cap of the option; returns the caps' scores before.
local function record(option, t)
  local previous = {}
  for c, cap in ipairs(option.caps) do
    previous[c] = score_of(cap) or false
  end
  for _, cap in ipairs(option.caps) do
    if cap.kind == 'z' then
      z_record(cap, t)
    else
      c_record(cap, t)
    end
  end
  return previous
end

-- The reply: the 7 header fields, then the entries, appended as they are found.
local out = { now, at, 0, -1, false, 0, false }

local function reply(previous, deferred)
  previous = previous or {}
  out[#out + 1] = #previous
  for i = 1, #previous do
    out[#out + 1] = previous[i]
  end
  if deferred then
    push_usages(out, options[1], out[7])
  end
  return out
end

if mode == 'U' then
  local option = options[1]
  for c, cap in ipairs(option.caps) do
    local score = tonumber(ARGV[7 + c])
    if cap.kind == 'c' then
      if score then
        c_record(cap, score)
      else
        c_remove(cap)
      end
    elseif score == nil or score <= now - cap.window then
      redis.call('ZREM', cap.key, member)
    else
      redis.call('ZADD', cap.key, fmt('%d', score), member)
      local ttl = redis.call('PTTL', cap.key)
      if ttl < 0 or now + ttl < score + cap.window then
        redis.call('PEXPIREAT', cap.key, fmt('%d', score + cap.window + skew))
      end
    end
    views[cap.key], owns[cap.key] = nil, nil
  end
  push2(out, 0, false)
  push_usages(out, option, at)
  return reply()
elseif mode == 'C' then
  local any = false
  for _, option in ipairs(options) do
    if holds(option) then
      any = true
      push2(out, 1, score_of(option.caps[1]))
      push_usages(out, option, at)
    else
      push2(out, 0, false)
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
  for o, option in ipairs(options) do
    if option.eligible and holds(option) then
      out[3], out[4], out[5] = 1, o - 1, score_of(option.caps[1])
      push2(out, 1, false)
      push_usages(out, option, at)
      return reply()
    end
  end
  if mode == 'D' then
    return reply()
  end
end

local first_retry = nil -- option 1's retry instant at `at`
if mode ~= 'M' then
  for o, option in ipairs(options) do
    local retry_at = option_refusal(option, at)
    if o == 1 then
      first_retry = retry_at
    end
    if retry_at ~= nil or not option.eligible then
      push2(out, 0, retry_at or false)
      push_usages(out, option, at)
    else
      out[4] = o - 1
      push2(out, 1, false)
      if dry_run then
        push_usages(out, option, at)
        return reply()
      end
      local previous = record(option, at)
      out[5] = at
      push_usages(out, option, at)
      return reply(previous)
    end
  end
end

-- No option chosen: defer option 1 (base.py point 3).
if defer == '' or dry_run or #options == 0 then
  return reply()
end
local when = first_retry or at -- "a": option 1's retry instant, found above
if defer ~= 'a' then -- "m<floor>": option 1's earliest instant >= floor
  local floor = tonumber(string.sub(defer, 2))
  when = option_refusal(options[1], floor) or floor
end
out[7] = when
if not_after and when > not_after then
  out[6] = 2
  return reply()
end
out[6] = 1
return reply(record(options[1], when), true)
