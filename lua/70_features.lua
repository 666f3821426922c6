-- Feature store: online state and point-in-time reads of the features declared once in
-- features/features.yaml. app/features/spec.py compiles the declarations into a compact JSON
-- spec that both Functions below take as ARGV[1] and interpret; no feature is hand-written
-- here. The offline twin (app/features/offline.py) computes the same definitions from the event
-- log, and app/features/online.py reads the packed state below with the same arithmetic in
-- Python (the fast path: one GET per entity). Semantics, layout and memory: docs/features.md.
--
-- The spec is decoded once per library load and memoised by its text (FEATURE_SPECS below):
-- a cache of a pure function of the argument, so it changes no result and is safe under
-- effects replication; a call then pays only for its own events or reads.
--
-- State: one STRING per entity (every key of one call carries its entity's hash tag):
--   u:{user}:fs              user features (user id, or anon:<id>)
--   i:{item}:fs              item features
--   u:{user}:fsc:<category>  user x category features
-- holding a MessagePack array {1, w, slots}: w = the newest event ts the entity has seen (ms),
-- slots = map slot id -> {h, ages, values}:
--   h       horizon ms (0: none): buckets ending at or before it were dropped (reads whose
--           window starts before it answer null rather than a partial value; for max / last
--           slots only when no kept bucket at or after it lies in the window)
--   ages    per bucket floor(w / bucket_ms) - n, where n = floor(ts / bucket_ms): ascending
--           (newest bucket first); small numbers, and a reader bisects them as they are
--   values  one per bucket, in the same order, by slot kind:
--             sum   integer: events, units (qty) or revenue (1/10,000 GBP) of the bucket
--             dec   float: sum of weight * 2^((ts - bucket start) / half_life)
--             max   integer: newest event ts in the bucket minus the bucket start
--             last  {ts - bucket start, value} of the bucket's newest event (same ts: larger)
--             kmv   binary: the bucket's k smallest member hashes, 7 bytes each, ascending

local FEATURE_SPECS, FEATURE_SPEC_COUNT, FEATURE_SPEC_CAP = {}, 0, 8
local FEATURE_ENTITIES = {user = true, item = true, user_category = true}
local SLOT_VALUES = {events = true, units = true, revenue = true}
local SLOT_MEMBERS = {item = true, user = true, category = true, session = true}
local FEATURE_AGGS = {
  count = true, sum = true, mean = true, last = true, recency = true,
  distinct_approx = true, decayed_sum = true, ratio = true,
}
local REVENUE_UNITS = 10000      -- revenue state is integer 1/10,000 GBP (exact sums)
local KMV_HEX = 13               -- 13 hex digits = 52 bits: exact in a Lua number
local KMV_SPACE = 4503599627370496  -- 2^52
local STATE_FORMAT = 1           -- first element of every packed state
local KMV_BYTES = 7              -- a 52-bit hash packed big-endian

local function spec_fail(msg)
  fail('ERR_BADARG', 'spec: ' .. msg .. ' (the spec is the JSON app/features/spec.py compiles)')
end

local function spec_int(value, name, min)
  if type(value) ~= 'number' or value ~= math.floor(value) or value < min then
    spec_fail(name .. ' must be an integer >= ' .. min)
  end
  return value
end

local function spec_events(raw, name)
  if type(raw) ~= 'table' then spec_fail(name .. ' must map event types to weights') end
  local out, n = {}, 0
  for etype, weight in pairs(raw) do
    if not EVENT_TYPES[etype] or type(weight) ~= 'number' then
      spec_fail(name .. ': bad event type or weight ' .. tostring(etype))
    end
    out[etype] = weight
    n = n + 1
  end
  if n == 0 then spec_fail(name .. ' has no event types') end
  return out
end

-- Decode and check the compiled spec once per distinct text.
local function feature_spec(text)
  local spec = FEATURE_SPECS[text]
  if spec ~= nil then return spec end
  local ok, raw = pcall(cjson.decode, text or '')
  if not ok or type(raw) ~= 'table' or raw.v ~= 1 then spec_fail('not a v1 feature spec') end
  spec = {
    hist = spec_int(raw.hist, 'hist', 0), ent = {}, slots = {}, feats = {},
  }
  for name, _ in pairs(FEATURE_ENTITIES) do
    local ttl = (type(raw.ttl) == 'table' and raw.ttl[name]) or 0
    spec.ent[name] = {ttl = spec_int(ttl, 'ttl.' .. name, 0), by_type = {}, maxret = 0}
  end
  for i, s in ipairs(raw.slots or {}) do
    local where = 'slots[' .. i .. ']'
    if type(s.id) ~= 'string' or not string.match(s.id, '^[%w]+$') then spec_fail(where .. '.id') end
    if not FEATURE_ENTITIES[s.e] then spec_fail(where .. '.e: unknown entity') end
    local slot = {
      id = s.id, ent = s.e, kind = s.k, val = s.val or 'events', ev = spec_events(s.ev, where .. '.ev'),
      b = spec_int(s.b, where .. '.b', 1000), ret = spec_int(s.ret, where .. '.ret', 1),
      hl = s.hl, kk = s.kk, of = s.of,
    }
    if slot.kind == 'sum' or slot.kind == 'last' then
      if not SLOT_VALUES[slot.val] then spec_fail(where .. '.val') end
    elseif slot.kind == 'dec' then
      if type(slot.hl) ~= 'number' or slot.hl <= 0 then spec_fail(where .. '.hl') end
    elseif slot.kind == 'kmv' then
      spec_int(slot.kk, where .. '.kk', 2)
      if not SLOT_MEMBERS[slot.of] then spec_fail(where .. '.of') end
    elseif slot.kind ~= 'max' then
      spec_fail(where .. '.k: unknown slot kind ' .. tostring(slot.kind))
    end
    if spec.slots[slot.id] then spec_fail('duplicate slot id ' .. slot.id) end
    spec.slots[slot.id] = slot
    spec.ent[slot.ent].maxret = math.max(spec.ent[slot.ent].maxret, slot.ret)
    local by_type = spec.ent[slot.ent].by_type
    for etype, _ in pairs(slot.ev) do
      by_type[etype] = by_type[etype] or {}
      table.insert(by_type[etype], slot)
    end
  end
  for i, f in ipairs(raw.feats or {}) do
    local where = 'feats[' .. i .. ']'
    if type(f.n) ~= 'string' or not FEATURE_AGGS[f.a] then spec_fail(where .. '.n/a') end
    local feat = {
      name = f.n, ent = f.e, agg = f.a, slots = {}, cal = f.cal == 1,
      w = spec_int(f.w, where .. '.w', 1), b = spec_int(f.b, where .. '.b', 1000),
      off = spec_int(f.off or 0, where .. '.off', 0), sc = spec_int(f.sc or 1, where .. '.sc', 1),
    }
    for j, id in ipairs(f.s or {}) do
      local slot = spec.slots[id]
      if slot == nil or slot.ent ~= feat.ent or slot.b ~= feat.b then
        spec_fail(where .. '.s[' .. j .. ']: unknown slot or other entity/bucket')
      end
      feat.slots[j] = slot
    end
    local need = (f.a == 'mean' or f.a == 'ratio') and 2 or 1
    if #feat.slots ~= need then spec_fail(where .. '.s: expected ' .. need .. ' slot(s)') end
    spec.feats[feat.name] = feat
  end
  if FEATURE_SPEC_COUNT >= FEATURE_SPEC_CAP then
    FEATURE_SPECS, FEATURE_SPEC_COUNT = {}, 0
  end
  FEATURE_SPECS[text] = spec
  FEATURE_SPEC_COUNT = FEATURE_SPEC_COUNT + 1
  return spec
end

local function int_text(n)
  return string.format('%d', n)
end

-- Shortest of %.15g..%.17g that reads back as the same double (exact round trip).
local function float_text(x)
  for _, fmt in ipairs({'%.15g', '%.16g'}) do
    local s = string.format(fmt, x)
    if tonumber(s) == x then return s end
  end
  return string.format('%.17g', x)
end

-- A slot's value of one event (the lines are the ones routed to this entity).
local function event_value(val, ev)
  if val == 'events' then return 1 end
  local total = 0
  for _, ln in ipairs(ev.lines) do
    if val == 'units' then
      total = total + ln.qty
    else
      total = total + math.floor(ln.qty * ln.price * REVENUE_UNITS + 0.5)
    end
  end
  return total
end

-- Distinct non-empty members of one event for a distinct_approx slot.
local function event_members(of, ev)
  if of == 'user' then return {ev.user} end
  if of == 'session' then
    if ev.session ~= '' then return {ev.session} end
    return {}
  end
  local out, seen = {}, {}
  for _, ln in ipairs(ev.lines) do
    local m = ln.item
    if of == 'category' then m = ln.category end
    if m ~= '' and not seen[m] then
      seen[m] = true
      out[#out + 1] = m
    end
  end
  return out
end

-- KMV (k minimum values) sketch: members hash to 52-bit numbers (sha1 prefix), stored as 7
-- bytes big-endian; keeping the k smallest of each bucket keeps the k smallest of any union
-- of buckets, so a window's sketch is exact whatever its buckets. Below k distinct members
-- the count is exact.
local function hex_byte(pair)
  return string.char(tonumber(pair, 16))
end

-- The member's hash packed (7 bytes big-endian: the 13 hex digits behind a zero digit).
local function kmv_hash_packed(member)
  return (string.gsub('0' .. string.sub(redis.sha1hex(member), 1, KMV_HEX), '..', hex_byte))
end

-- Insert one packed hash into a bucket's packed sketch (ascending, distinct, at most k):
-- fixed-width big-endian strings compare like the numbers, so the bucket is searched and
-- spliced as it is stored, without unpacking it (a view pays O(log k), not O(k log k)).
local function kmv_insert(bin, h, k)
  local lo, hi = 1, #bin / KMV_BYTES
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local at = (mid - 1) * KMV_BYTES
    local x = string.sub(bin, at + 1, at + KMV_BYTES)
    if x == h then return bin end
    if x < h then lo = mid + 1 else hi = mid - 1 end
  end
  if lo > k then return bin end  -- not among the k smallest
  local at = (lo - 1) * KMV_BYTES
  local out = string.sub(bin, 1, at) .. h .. string.sub(bin, at + 1)
  if #out > k * KMV_BYTES then out = string.sub(out, 1, k * KMV_BYTES) end
  return out
end

-- Numbers (duplicates allowed) -> the k smallest distinct, ascending.
local function kmv_smallest(nums, k)
  local uniq, seen = {}, {}
  for _, x in ipairs(nums) do
    if not seen[x] then
      seen[x] = true
      uniq[#uniq + 1] = x
    end
  end
  table.sort(uniq)
  local out = {}
  for i = 1, math.min(k, #uniq) do out[i] = uniq[i] end
  return out
end

-- Packed hashes -> numbers (7 bytes big-endian each), for the reads' estimates.
local function kmv_unpack(bin, into)
  for i = 1, #bin, KMV_BYTES do
    local x = 0
    for j = i, i + KMV_BYTES - 1 do x = x * 256 + string.byte(bin, j) end
    into[#into + 1] = x
  end
  return into
end

-- Distinct-count estimate: exact below k, else (k - 1) / U(k) with U(k) the k-th smallest
-- hash scaled to (0, 1]; relative standard error about 1 / sqrt(k - 2).
local function kmv_estimate(nums, k)
  if #nums < k then return #nums, true end
  return (k - 1) * KMV_SPACE / (nums[k] + 1), false
end

-- The bucket-aligned window [start, end) of a feature read as of t: rolling windows end at
-- the start of t's bucket; calendar windows start at t's UTC day (or Monday) boundary.
local function feature_window(feat, t)
  local e = t - t % feat.b
  if feat.cal then return t - (t + feat.off) % feat.w, e end
  return e - feat.w, e
end


-- 'ts:value' order of `last` buckets: is (ts, v) later than (best_ts, best_v)?
local function last_better(ts, v, best_ts, best_v)
  if best_ts == nil then return true end
  return ts > best_ts or (ts == best_ts and v > best_v)
end

-- A bucket's packed value -> its absolute form for reads (max: ts; last: {ts, v}; others
-- as stored).
local function bucket_value(slot, n, raw)
  local kind = slot.kind
  if kind == 'max' then return n * slot.b + raw end
  if kind == 'last' then return {n * slot.b + raw[1], raw[2]} end
  return raw
end

local function state_unpack(raw)
  local ok, obj = pcall(cmsgpack.unpack, raw)
  if not ok or type(obj) ~= 'table' or obj[1] ~= STATE_FORMAT or type(obj[3]) ~= 'table' then
    fail('ERR_BADARG', 'feature state is not format ' .. STATE_FORMAT .. ' (written by another version?)')
  end
  return obj
end

-- Packed state (GET reply) -> for reads: {w = newest ts or nil, slots = {id -> s}}, s =
-- {h, ages, vals, base = floor(w / bucket)} until slot_open turns it into its read form
-- (s.n: bucket indices absolute and ascending, s.v: values as stored). Slots the spec does
-- not have are left out.
local function state_decode(spec, raw)
  local st = {w = nil, slots = {}}
  if not raw then return st end
  local obj = state_unpack(raw)
  st.w = obj[2]
  for id, s in pairs(obj[3]) do
    local slot = spec.slots[id]
    if slot ~= nil then
      st.slots[id] = {h = s[1], ages = s[2], vals = s[3], base = math.floor(st.w / slot.b)}
    end
  end
  return st
end

-- The slot's read form (see state_decode), built once.
local function slot_open(s)
  if s.n ~= nil then return s end
  local ages, vals, base, ns, vs = s.ages, s.vals, s.base, {}, {}
  local m = #ages
  for i = 1, m do
    ns[i] = base - ages[m + 1 - i]
    vs[i] = vals[m + 1 - i]
  end
  s.n, s.v, s.ages, s.vals = ns, vs, nil, nil
  return s
end

-- Packed state (GET reply) -> for writes: {w = newest ts or nil, slots = {id -> {h, ages,
-- vals}}}, the slots exactly as stored (checked before any write). The write path updates
-- them in place: a call pays for unpacking, the buckets its events touch, re-basing the ages
-- and packing, with no working copy of the state.
local function state_stored(raw)
  if not raw then return {w = nil, slots = {}} end
  local obj = state_unpack(raw)
  return {w = obj[2], slots = obj[3]}
end

-- Insertion point of `age` in ascending `ages`: the first position holding age or more.
-- Events mostly land in the newest bucket (age 0, position 1): checked first.
local function age_pos(ages, age)
  local lo, hi = 1, #ages + 1
  if hi == 1 or ages[1] >= age then return 1 end
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ages[mid] < age then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- Fold one event into bucket n (at `age`) of a stored slot s = {h, ages, vals}, in place;
-- a bucket the event creates is inserted in order. Values as stored (see the file header).
local function bucket_fold(slot, s, n, age, ev)
  local ages, vals = s[2], s[3]
  local i = age_pos(ages, age)
  local has = ages[i] == age
  local cur = nil
  if has then cur = vals[i] end
  local kind, new = slot.kind, nil
  if kind == 'sum' then
    local v = event_value(slot.val, ev)
    if v == 0 then return end
    new = (cur or 0) + v
  elseif kind == 'dec' then
    new = (cur or 0) + slot.ev[ev.type] * 2 ^ ((ev.ts - n * slot.b) / slot.hl)
  elseif kind == 'max' then
    new = ev.ts - n * slot.b
    if cur ~= nil and new <= cur then return end
  elseif kind == 'last' then
    local v = event_value(slot.val, ev)
    local off = ev.ts - n * slot.b
    if cur ~= nil and not last_better(off, v, cur[1], cur[2]) then return end
    new = {off, v}
  else
    local members = event_members(slot.of, ev)
    if #members == 0 then return end
    new = cur or ''
    for _, m in ipairs(members) do new = kmv_insert(new, kmv_hash_packed(m), slot.kk) end
  end
  if has then
    vals[i] = new
  else
    table.insert(ages, i, age)
    table.insert(vals, i, new)
  end
end

-- Drop the buckets no read as of (newest - history) or later can use, raising the horizon:
-- those that left every window (start < newest - retention) and, for max / last slots, those
-- older than the newest bucket before the first readable window end (it lies in every window
-- that holds them and always wins). Stored order: newest first, so drops come off the end.
-- Returns the number dropped.
local function slot_trim(spec, slot, s, w)
  local ages, vals = s[2], s[3]
  local m = #ages
  local base = math.floor(w / slot.b)
  local keep = m
  while keep >= 1 and (base - ages[keep]) * slot.b < w - slot.ret do keep = keep - 1 end
  if slot.kind == 'max' or slot.kind == 'last' then
    local first_end = math.floor((w - spec.hist) / slot.b)
    for j = 1, keep do
      if base - ages[j] < first_end then
        keep = j
        break
      end
    end
  end
  if keep == m then return 0 end
  s[1] = math.max(s[1], (base - ages[keep + 1] + 1) * slot.b)
  for i = m, keep + 1, -1 do
    ages[i] = nil
    vals[i] = nil
  end
  return m - keep
end

-- Parse one entity's events from ARGV at `pos` (format of features_ingest below) without
-- writing anything; returns the events and the next position.
local function features_parse_events(argv, pos, n_events)
  local events = {}
  for e = 1, n_events do
    local ev = {
      type = argv[pos], ts = int(argv[pos + 1], 'ts'), user = nonempty(argv[pos + 2], 'user'),
      session = argv[pos + 3] or '', lines = {},
    }
    if not EVENT_TYPES[ev.type] then fail('ERR_BADARG', 'unknown event type ' .. tostring(ev.type)) end
    if ev.ts < 0 then fail('ERR_BADARG', 'ts must be >= 0') end
    local n_lines = int(argv[pos + 4], 'n_lines')
    pos = pos + 5
    for l = 1, n_lines do
      ev.lines[l] = {
        item = nonempty(argv[pos], 'item_id'), qty = int(argv[pos + 1], 'qty'),
        price = num(argv[pos + 2], 'price'), category = argv[pos + 3] or '',
      }
      pos = pos + 4
    end
    events[e] = ev
  end
  return events, pos
end

-- Apply validated events to one entity's packed state (re-base, fold, trim, SET with the
-- entity type's TTL). Shared by features_ingest and any Function of this library that applies
-- a shopper's state in one call; `key` comes from the caller's KEYS. `st` is the key's
-- state_stored() value when the caller already read it (to validate before its first write),
-- else nil. Returns (buckets updated, buckets dropped).
local function features_apply(spec, key, ent_name, events, st)
  local ent = spec.ent[ent_name]
  if #events == 0 then return 0, 0 end
  st = st or state_stored(redis.call('GET', key))
  local w0, w = st.w, st.w
  for _, ev in ipairs(events) do
    if w == nil or ev.ts > w then w = ev.ts end
  end
  local slots, trimmed = st.slots, 0
  -- Ages are relative to the newest ts: re-based on the new one. Slots the spec no longer
  -- has, or of another entity type, are not this key's: dropped.
  for id, s in pairs(slots) do
    local slot = spec.slots[id]
    if slot == nil or slot.ent ~= ent_name then
      trimmed = trimmed + #s[2]
      slots[id] = nil
    else
      local delta = math.floor(w / slot.b) - math.floor(w0 / slot.b)
      if delta ~= 0 then
        local ages = s[2]
        for i = 1, #ages do ages[i] = ages[i] + delta end
      end
    end
  end
  local written, touched = 0, {}
  for _, ev in ipairs(events) do
    for _, slot in ipairs(ent.by_type[ev.type] or {}) do
      local s = slots[slot.id]
      if s == nil then
        s = {0, {}, {}}
        slots[slot.id] = s
      end
      local n = math.floor(ev.ts / slot.b)
      if n * slot.b < w - slot.ret then
        -- Older than any window a read at (newest - history) or later covers: not kept
        -- (memory stays bounded); the horizon makes older reads answer null instead.
        s[1] = math.max(s[1], (n + 1) * slot.b)
      else
        local seen = touched[slot.id]
        if seen == nil then
          seen = {}
          touched[slot.id] = seen
        end
        if not seen[n] then
          seen[n] = true
          written = written + 1
        end
        bucket_fold(slot, s, n, math.floor(w / slot.b) - n, ev)
      end
    end
  end
  for id, s in pairs(slots) do trimmed = trimmed + slot_trim(spec, spec.slots[id], s, w) end
  local packed = cmsgpack.pack({STATE_FORMAT, w, slots})
  if ent.ttl > 0 then
    redis.call('SET', key, packed, 'EX', ent.ttl)
  else
    redis.call('SET', key, packed)
  end
  return written, trimmed
end

-- features_ingest: fold accepted events into the entities' packed feature state.
--
-- Purpose: the online half of the feature store. Called from the ingestion phase-2 pipeline
--   (app/features/online.py `ingest_hook`) with the events ingest_user accepted, so a duplicate
--   never counts twice. The Python side only routes events to entities (user, each item of the
--   lines, each category of the lines); which slots an event updates, bucket, value, decay and
--   sketch are decided here from the spec. All input is validated before the first write.
--
-- KEYS[1..n]  the entity state strings of this call (u:{user}:fs, i:{item}:fs,
--             u:{user}:fsc:<category>; STRING, packed as above). A cluster client sends one
--             slot's keys per call; a standalone server takes many entities per call.
-- ARGV:
--   [1] spec      str  compiled feature spec (JSON, app/features/spec.py FeatureSet.spec)
--   [2] n_groups  int  one group per entity key
--   per group: k_state (1-based KEYS index), entity ('user' | 'item' | 'user_category'),
--     n_events, then per event: type, ts_ms (int), user, session_id, n_lines,
--     then n_lines x (item_id, qty (int), price (GBP, number), category)
--     (the lines routed to this entity: all of them for a user, the item's lines for an
--     item, the category's lines for a user x category)
-- Reply: {groups, buckets_written, buckets_trimmed}
-- Errors: ERR_BADARG (bad spec, entity, event, number or state format, one key in two
--   groups), ERR_KEYS (bad KEYS index); raised before the first write.
-- Writes (each state string): SET of the whole packed state with EX = the entity type's ttl
--   (spec: the longest ttl of its features, >= window + bucket + history, so it never cuts a
--   window). Every write drops buckets older than newest - retention (event time) and
--   dominated max / last buckets, raising horizons; a late event older than the retention is
--   not written (its slot's horizon is raised instead). Bound: per slot at most
--   retention / bucket + 1 buckets (docs/features.md, "Memory").
local function features_ingest(keys, argv)
  local spec = feature_spec(argv[1])
  local n_groups = int(argv[2], 'n_groups')
  local groups, seen = {}, {}
  local pos = 3
  for g = 1, n_groups do
    local key = key_at(keys, argv[pos], 'k_state')
    if key == nil then fail('ERR_KEYS', 'k_state must not be 0') end
    -- Each state is read once before the writes: a second group of one key would lose updates.
    if seen[key] then fail('ERR_BADARG', 'an entity appears twice in one call') end
    seen[key] = true
    local ent_name = argv[pos + 1]
    if spec.ent[ent_name or ''] == nil then fail('ERR_BADARG', 'unknown entity ' .. tostring(ent_name)) end
    local n_events = int(argv[pos + 2], 'n_events')
    local events
    events, pos = features_parse_events(argv, pos + 3, n_events)
    groups[g] = {key = key, ent_name = ent_name, events = events}
  end
  if argv[pos] ~= nil then fail('ERR_BADARG', 'unexpected arguments after the last group') end
  for _, grp in ipairs(groups) do
    -- Read (and check) every state first: a foreign value fails here, before any write.
    if #grp.events > 0 then grp.st = state_stored(redis.call('GET', grp.key)) end
  end

  local written, trimmed = 0, 0
  for _, grp in ipairs(groups) do
    local w_n, t_n = features_apply(spec, grp.key, grp.ent_name, grp.events, grp.st)
    written = written + w_n
    trimmed = trimmed + t_n
  end
  return {#groups, written, trimmed}
end

-- One feature's value text (false = null) as of t from an entity's decoded state.
local function feature_value(spec, feat, st, t)
  local s_ms, e_ms = feature_window(feat, t)
  local lo, hi = s_ms / feat.b, e_ms / feat.b
  local x, y, best_ts, best_v, best_n, nums = 0, 0, nil, nil, nil, {}
  local h_max = 0
  for role, slot in ipairs(feat.slots) do
    local s = st.slots[slot.id]
    if s ~= nil then
      slot_open(s)
      if s.h > h_max then h_max = s.h end
      for i, n in ipairs(s.n) do
        if n >= hi then break end
        if n >= lo then
          local raw = s.v[i]
          local kind = slot.kind
          if kind == 'sum' then
            if role == 1 then x = x + raw else y = y + raw end
          elseif kind == 'dec' then
            x = x + raw * 2 ^ (-(t - n * slot.b) / slot.hl)
          elseif kind == 'kmv' then
            kmv_unpack(raw, nums)
          else
            local v = bucket_value(slot, n, raw)
            local ts, val = v, nil
            if kind == 'last' then ts, val = v[1], v[2] end
            if best_ts == nil or last_better(ts, val or 0, best_ts, best_v or 0) then
              best_ts, best_v, best_n = ts, val, n
            end
          end
        end
      end
    end
  end
  local agg = feat.agg
  if agg == 'last' or agg == 'recency' then
    -- Dropped buckets are older than a kept one in the window: they could not have won.
    if s_ms < h_max and (best_n == nil or best_n * feat.b < h_max) then return false end
    if best_ts == nil then return false end
    if agg == 'recency' then return float_text((t - best_ts) / 1000) end
    if feat.sc == 1 then return int_text(best_v) end
    return float_text(best_v / feat.sc)
  end
  if s_ms < h_max then return false end
  if agg == 'count' then return int_text(x) end
  if agg == 'sum' then
    if feat.sc == 1 then return int_text(x) end
    return float_text(x / feat.sc)
  end
  if agg == 'mean' or agg == 'ratio' then
    if y == 0 then return false end
    if agg == 'ratio' then return float_text(x / y) end
    return float_text(x / y / feat.sc)
  end
  if agg == 'decayed_sum' then return float_text(x) end
  local kk = feat.slots[1].kk
  local est, exact = kmv_estimate(kmv_smallest(nums, kk), kk)
  if exact then return int_text(est) end
  return float_text(est)
end

-- features_get (no-writes): feature values of one or more entities of one type, as of a time.
--
-- Purpose: the online read in Redis, callable directly (FCALL_RO) by any service: "as of t"
--   means the events of whole buckets before the bucket holding t (only events before t
--   count), the same definition the offline path computes. The application reads the same
--   state with one GET per entity and this arithmetic in Python (app/features/online.py), which
--   holds Redis for a few us per entity instead of this Function's decoding and arithmetic.
--
-- KEYS[1..n]  entity state strings of one entity type (u:{user}:fs, i:{item}:fs or
--             u:{user}:fsc:<category>); a cluster client sends one slot per call
-- ARGV[1] spec        str  compiled feature spec (JSON, as for features_ingest)
-- ARGV[2] as_of       str  '' or 'now' (server time), 'latest' (1 ms after each entity's newest
--                          event: all of its events in closed buckets), or ms since the epoch
-- ARGV[3] n_features  int  >= 1
-- ARGV[4..3+n]        str  feature names, all of one entity type
-- Reply: per key, in KEYS order: as_of_ms (string), then one value per feature: count and
--   integer sums as integer strings, other values as float strings (exact round trip), nil
--   where the value is undefined (mean/ratio without denominator, last/recency without event)
--   or would need dropped buckets (see the horizon above).
-- Errors: ERR_BADARG (bad spec, unknown feature, mixed entity types, bad as_of, foreign state).
--   Writes nothing.
local function features_get(keys, argv)
  local spec = feature_spec(argv[1])
  local as_of = argv[2] or ''
  local n = int(argv[3], 'n_features')
  if n < 1 or #argv ~= 3 + n then fail('ERR_BADARG', 'expected n_features >= 1 names') end
  local feats, ent = {}, nil
  for i = 1, n do
    local feat = spec.feats[argv[3 + i]]
    if feat == nil then fail('ERR_BADARG', 'unknown feature ' .. tostring(argv[3 + i])) end
    if ent ~= nil and feat.ent ~= ent then fail('ERR_BADARG', 'features of one entity type per call') end
    ent = feat.ent
    feats[i] = feat
  end
  local fixed = nil
  if as_of == '' or as_of == 'now' then
    fixed = now_ms()
  elseif as_of ~= 'latest' then
    fixed = int(as_of, 'as_of')
    if fixed < 0 then fail('ERR_BADARG', 'as_of must be >= 0') end
  end
  local reply = {}
  for _, key in ipairs(keys) do
    local st = state_decode(spec, redis.call('GET', key))
    local t = fixed
    if t == nil then
      if st.w == nil then t = now_ms() else t = st.w + 1 end
    end
    reply[#reply + 1] = int_text(t)
    for _, feat in ipairs(feats) do
      reply[#reply + 1] = feature_value(spec, feat, st, t)
    end
  end
  return reply
end

redis.register_function{function_name = 'features_ingest', callback = features_ingest}
redis.register_function{function_name = 'features_get', callback = features_get,
  flags = {'no-writes'}}
