-- Feature store: online state and point-in-time reads of the features declared once in
-- features/features.yaml. app/features/spec.py compiles the declarations into a compact JSON spec
-- that both Functions below take as ARGV[1] and interpret; no feature is hand-written here.
-- The offline twin (app/features/offline.py) computes the same definitions from the event log.
-- Semantics, granularity and memory: docs/features.md.
--
-- The spec is decoded once per library load and memoised by its text (FEATURE_SPECS below):
-- a cache of a pure function of the argument, so it changes no result and is safe under
-- effects replication; a call then pays only for its own events or reads.
--
-- State: one HASH per entity; every key of one call carries its entity's hash tag.
--   u:{user}:feat              HASH  user features (user id, or anon:<id>)
--   i:{item}:feat              HASH  item features
--   u:{user}:featc:<category>  HASH  user x category features
-- Fields:
--   '<slot>:<n>'  the state of bucket n of a slot, n = floor(ts / bucket_ms) (event time,
--                 buckets aligned on the UTC epoch); by slot kind:
--                   sum   integer: events, units (qty) or revenue (1/10,000 GBP) of the bucket
--                   dec   float: sum of weight * 2^((ts - bucket start) / half_life)
--                   max   integer: newest event ts in the bucket
--                   last  'ts:value' of the bucket's newest event (same ts: larger value)
--                   kmv   the bucket's k smallest member hashes (13 hex digits each, ascending)
--   '<slot>:h'    horizon ms: buckets ending at or before it were trimmed (reads whose window
--                 starts before it answer null rather than a partial value)
--   '_w'          newest event ts the entity has seen;  '_t' its value at the last trim;
--   '_e'          the '_w' at which the oldest kept bucket leaves its windows (trim only then)

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
local CHUNK = 1000               -- arguments per HMGET / HSET / HDEL (Lua's unpack limit)

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
    trim = spec_int(raw.trim, 'trim', 1), tmin = spec_int(raw.tmin, 'tmin', 0),
    ent = {}, slots = {}, feats = {},
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

-- KMV (k minimum values) sketch: members hash to 52-bit numbers (sha1 prefix); keeping the k
-- smallest of each bucket keeps the k smallest of any union of buckets, so a window's sketch
-- is exact whatever its buckets. Below k distinct members the count is exact.
local function kmv_hash(member)
  return string.sub(redis.sha1hex(member), 1, KMV_HEX)
end

local function kmv_decode(text, into)
  for i = 1, #text, KMV_HEX do into[#into + 1] = string.sub(text, i, i + KMV_HEX - 1) end
end

-- Hex hashes (duplicates allowed) -> the k smallest distinct, as ascending numbers.
local function kmv_smallest(hexes, k)
  local nums, seen = {}, {}
  for _, h in ipairs(hexes) do
    if not seen[h] then
      seen[h] = true
      nums[#nums + 1] = tonumber(h, 16)
    end
  end
  table.sort(nums)
  local out = {}
  for i = 1, math.min(k, #nums) do out[i] = nums[i] end
  return out
end

local function kmv_encode(nums)
  local parts = {}
  for i, n in ipairs(nums) do parts[i] = string.format('%013x', n) end
  return table.concat(parts)
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

-- 'ts:value' of a `last` bucket; is (ts, v) later than (best_ts, best_v)?
local function last_better(ts, v, best_ts, best_v)
  if best_ts == nil then return true end
  return ts > best_ts or (ts == best_ts and v > best_v)
end

local function parse_last(raw)
  local ts, v = string.match(raw, '^(%-?%d+):(%-?%d+)$')
  return tonumber(ts), tonumber(v)
end

-- HMGET in chunks; a missing field is `false` at its position.
local function hmget_chunked(key, fields)
  local out = {}
  for i = 1, #fields, CHUNK do
    local last = math.min(i + CHUNK - 1, #fields)
    local part = redis.call('HMGET', key, unpack(fields, i, last))
    for j = i, last do out[j] = part[j - i + 1] end
  end
  return out
end

local function call_chunked(cmd, key, args, step)
  for i = 1, #args, step do
    redis.call(cmd, key, unpack(args, i, math.min(i + step - 1, #args)))
  end
end

-- Raise slots' horizons: `gone[slot id]` is the highest bucket index dropped (trimmed, or a
-- late event's bucket not written); reads whose window starts before its end answer null.
-- Appends the '<slot>:h' updates to `set` (field, value, ...) for the caller's one HSET.
local function raise_horizons(spec, key, gone, set)
  local ids, hfields = {}, {}
  for id, _ in pairs(gone) do
    ids[#ids + 1] = id
    hfields[#hfields + 1] = id .. ':h'
  end
  if #ids == 0 then return end
  local old = redis.call('HMGET', key, unpack(hfields))
  for i, id in ipairs(ids) do
    local h = (gone[id] + 1) * spec.slots[id].b
    local prev = tonumber(old[i])
    if prev == nil or h > prev then
      set[#set + 1] = hfields[i]
      set[#set + 1] = int_text(h)
    end
  end
end

-- Delete buckets that left every window of their slot (start < newest - retention, event
-- time) and fields of slots the spec no longer has; record each slot's highest deleted bucket
-- in `gone` (the caller raises the horizons once). Returns the number of fields deleted and
-- the next expiry: the newest-event time at which the oldest kept bucket leaves its windows
-- (nil: no bucket kept).
local function trim_entity(spec, key, ent_name, newest, gone)
  local fields = redis.call('HKEYS', key)
  local dead, expiry = {}, nil
  for _, field in ipairs(fields) do
    if string.byte(field, 1) ~= 95 then  -- '_' meta fields stay
      local p = string.find(field, ':', 1, true)
      local slot = p and spec.slots[string.sub(field, 1, p - 1)]
      local rest = p and string.sub(field, p + 1)
      if slot == nil or slot.ent ~= ent_name then
        dead[#dead + 1] = field
      elseif rest ~= 'h' then
        local n = tonumber(rest)
        if n == nil then
          dead[#dead + 1] = field
        elseif n * slot.b < newest - slot.ret then
          dead[#dead + 1] = field
          if gone[slot.id] == nil or n > gone[slot.id] then gone[slot.id] = n end
        elseif expiry == nil or n * slot.b + slot.ret < expiry then
          expiry = n * slot.b + slot.ret
        end
      end
    end
  end
  if #dead > 0 then call_chunked('HDEL', key, dead, CHUNK) end
  return #dead, expiry
end

-- features_ingest: fold accepted events into the entities' bucketed feature state.
--
-- Purpose: the online half of the feature store. Called from the ingestion phase-2 pipeline
--   (app/features/spec.py `ingest_hook`) with the events ingest_user accepted, so a duplicate never
--   counts twice. The Python side only routes events to entities (user, each item of the
--   lines, each category of the lines); which slots an event updates, bucket, value, decay and
--   sketch are decided here from the spec. All input is validated before the first write.
--
-- KEYS[1..n]  the entity state hashes of this call (patterns above: u:{user}:feat,
--             i:{item}:feat, u:{user}:featc:<category>; HASH). A cluster client sends one
--             slot's keys per call; a standalone server takes many entities per call.
-- ARGV:
--   [1] spec      str  compiled feature spec (JSON, app/features/spec.py FeatureSet.spec)
--   [2] n_groups  int  one group per entity key
--   per group: k_state (1-based KEYS index), entity ('user' | 'item' | 'user_category'),
--     n_events, then per event: type, ts_ms (int), user, session_id, n_lines,
--     then n_lines x (item_id, qty (int), price (GBP, number), category)
--     (the lines routed to this entity: all of them for a user, the item's lines for an
--     item, the category's lines for a user x category)
-- Reply: {groups, fields_written, fields_trimmed}
-- Errors: ERR_BADARG (bad spec, entity, event or number), ERR_KEYS (bad KEYS index); raised
--   before the first write.
-- Writes (each state hash): bucket fields (HINCRBY / HINCRBYFLOAT / HSET), '_w', '_t', '_e'
--   (HSET / HDEL), trimmed buckets (HDEL: when the newest event passed '_e', moved `trim` ms
--   of event time past the last trim, and the hash holds more than `tmin` fields or the last
--   trim is a whole retention old), horizons '<slot>:h' (HSET; raised by a trim, or by a
--   late event older than newest - retention, whose bucket is not written), EXPIRE ttl of
--   the entity type (spec: the longest ttl of its features, >= window + bucket + history, so
--   it never cuts a window). Bound: the sum over its slots of (retention + trim) / bucket + 1
--   buckets, plus tmin: a fixed maximum of fields per hash (docs/features.md, "Memory").
local function features_ingest(keys, argv)
  local spec = feature_spec(argv[1])
  local n_groups = int(argv[2], 'n_groups')
  local groups = {}
  local pos = 3
  for g = 1, n_groups do
    local key = key_at(keys, argv[pos], 'k_state')
    if key == nil then fail('ERR_KEYS', 'k_state must not be 0') end
    local ent_name = argv[pos + 1]
    local ent = spec.ent[ent_name or '']
    if ent == nil then fail('ERR_BADARG', 'unknown entity ' .. tostring(ent_name)) end
    local n_events = int(argv[pos + 2], 'n_events')
    pos = pos + 3
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
    groups[g] = {key = key, ent_name = ent_name, ent = ent, events = events}
  end
  if argv[pos] ~= nil then fail('ERR_BADARG', 'unexpected arguments after the last group') end

  local written, trimmed = 0, 0
  for _, grp in ipairs(groups) do
    local key, ent = grp.key, grp.ent
    if #grp.events > 0 then
      local meta = redis.call('HMGET', key, '_w', '_t', '_e')
      local old_w, last_trim, old_e = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
      local expiry = old_e
      local w = old_w
      for _, ev in ipairs(grp.events) do
        if w == nil or ev.ts > w then w = ev.ts end
      end
      local ints, int_order, floats, float_order = {}, {}, {}, {}
      local rmw, rmw_order, gone = {}, {}, {}
      for _, ev in ipairs(grp.events) do
        for _, slot in ipairs(ent.by_type[ev.type] or {}) do
          local n = math.floor(ev.ts / slot.b)
          if n * slot.b < w - slot.ret then
            -- Older than any window a read at (newest - history) or later covers: not kept
            -- (memory stays bounded); the horizon makes older reads answer null instead.
            if gone[slot.id] == nil or n > gone[slot.id] then gone[slot.id] = n end
          else
            local field = slot.id .. ':' .. int_text(n)
            if expiry == nil or n * slot.b + slot.ret < expiry then expiry = n * slot.b + slot.ret end
            if slot.kind == 'sum' then
              local v = event_value(slot.val, ev)
              if v ~= 0 then
                if ints[field] == nil then ints[field] = 0; int_order[#int_order + 1] = field end
                ints[field] = ints[field] + v
              end
            elseif slot.kind == 'dec' then
              local v = slot.ev[ev.type] * 2 ^ ((ev.ts - n * slot.b) / slot.hl)
              if floats[field] == nil then floats[field] = 0; float_order[#float_order + 1] = field end
              floats[field] = floats[field] + v
            else
              local p = rmw[field]
              if p == nil then
                p = {slot = slot, hexes = {}}
                rmw[field] = p
                rmw_order[#rmw_order + 1] = field
              end
              if slot.kind == 'max' then
                if p.ts == nil or ev.ts > p.ts then p.ts = ev.ts end
              elseif slot.kind == 'last' then
                local v = event_value(slot.val, ev)
                if last_better(ev.ts, v, p.ts, p.v) then p.ts = ev.ts; p.v = v end
              else
                for _, m in ipairs(event_members(slot.of, ev)) do p.hexes[#p.hexes + 1] = kmv_hash(m) end
              end
            end
          end
        end
      end
      for _, field in ipairs(int_order) do
        redis.call('HINCRBY', key, field, int_text(ints[field]))
      end
      for _, field in ipairs(float_order) do
        redis.call('HINCRBYFLOAT', key, field, string.format('%.17g', floats[field]))
      end
      written = written + #int_order + #float_order
      if #rmw_order > 0 then
        local cur = hmget_chunked(key, rmw_order)
        local set = {}
        for i, field in ipairs(rmw_order) do
          local p, old = rmw[field], cur[i]
          local new = nil
          if p.slot.kind == 'max' then
            local o = tonumber(old)
            if o == nil or p.ts > o then new = int_text(p.ts) end
          elseif p.slot.kind == 'last' then
            local ots, ov = nil, nil
            if old then ots, ov = parse_last(old) end
            if last_better(p.ts, p.v, ots, ov) then new = int_text(p.ts) .. ':' .. int_text(p.v) end
          elseif #p.hexes > 0 then
            local hexes = {}
            if old then kmv_decode(old, hexes) end
            for _, h in ipairs(p.hexes) do hexes[#hexes + 1] = h end
            local enc = kmv_encode(kmv_smallest(hexes, p.slot.kk))
            if enc ~= old then new = enc end
          end
          if new ~= nil then
            set[#set + 1] = field
            set[#set + 1] = new
          end
        end
        if #set > 0 then call_chunked('HSET', key, set, 2 * CHUNK) end
        written = written + #set / 2
      end
      local meta_set = {}
      if old_w == nil or w > old_w then
        meta_set[#meta_set + 1] = '_w'
        meta_set[#meta_set + 1] = int_text(w)
      end
      if last_trim == nil then last_trim = w end
      -- Trim when the oldest kept bucket left its windows, at most once per `trim` of event
      -- time, and only for hashes above `tmin` fields (small ones: once per retention).
      if expiry ~= nil and w > expiry and w - last_trim >= spec.trim
          and (w - last_trim >= ent.maxret or redis.call('HLEN', key) > spec.tmin) then
        local n_dead
        n_dead, expiry = trim_entity(spec, key, grp.ent_name, w, gone)
        trimmed = trimmed + n_dead
        last_trim = w
      end
      if tonumber(meta[2]) ~= last_trim then
        meta_set[#meta_set + 1] = '_t'
        meta_set[#meta_set + 1] = int_text(last_trim)
      end
      if expiry ~= nil and expiry ~= old_e then
        meta_set[#meta_set + 1] = '_e'
        meta_set[#meta_set + 1] = int_text(expiry)
      end
      raise_horizons(spec, key, gone, meta_set)  -- skipped late buckets and trimmed ones
      if #meta_set > 0 then redis.call('HSET', key, unpack(meta_set)) end
      if expiry == nil and old_e ~= nil then redis.call('HDEL', key, '_e') end
      if ent.ttl > 0 then redis.call('EXPIRE', key, ent.ttl) end
    end
  end
  return {#groups, written, trimmed}
end

-- Fold one bucket's raw state into the features reading its slot. `uses` lists
-- {feature index, role} (role 2: a mean's event count, a ratio's denominator); `acc[i]` is
-- feature i's accumulator: bucket range [lo, hi), as-of t, sums x / y, newest ts / v, hexes.
local function accumulate(feats, acc, uses, n, raw)
  local number = nil
  for _, use in ipairs(uses) do
    local i, role = use[1], use[2]
    local a = acc[i]
    if n >= a.lo and n < a.hi then
      local feat = feats[i]
      local slot = feat.slots[role]
      local kind = slot.kind
      if kind == 'sum' then
        number = number or tonumber(raw)
        if role == 1 then a.x = a.x + number else a.y = a.y + number end
      elseif kind == 'dec' then
        number = number or tonumber(raw)
        a.x = a.x + number * 2 ^ (-(a.t - n * slot.b) / slot.hl)
      elseif kind == 'max' then
        number = number or tonumber(raw)
        if a.ts == nil or number > a.ts then a.ts = number end
      elseif kind == 'last' then
        local ts, v = parse_last(raw)
        if ts ~= nil and last_better(ts, v, a.ts, a.v) then a.ts, a.v = ts, v end
      else
        a.hexes = a.hexes or {}
        kmv_decode(raw, a.hexes)
      end
    end
  end
end

-- A feature's value text (false = null) from its accumulator.
local function feature_result(feat, a)
  local agg = feat.agg
  if agg == 'count' then return int_text(a.x) end
  if agg == 'sum' then
    if feat.sc == 1 then return int_text(a.x) end
    return float_text(a.x / feat.sc)
  end
  if agg == 'mean' or agg == 'ratio' then
    if a.y == 0 then return false end
    if agg == 'ratio' then return float_text(a.x / a.y) end
    return float_text(a.x / a.y / feat.sc)
  end
  if agg == 'decayed_sum' then return float_text(a.x) end
  if agg == 'distinct_approx' then
    local kk = feat.slots[1].kk
    local est, exact = kmv_estimate(kmv_smallest(a.hexes or {}, kk), kk)
    if exact then return int_text(est) end
    return float_text(est)
  end
  if a.ts == nil then return false end
  if agg == 'recency' then return float_text((a.t - a.ts) / 1000) end
  if feat.sc == 1 then return int_text(a.v) end
  return float_text(a.v / feat.sc)
end

-- Read one entity hash into the accumulators: one HGETALL when the hash holds no more fields
-- than the windows span (sparse entities), else HMGET of exactly the windows' buckets.
local function read_entity(key, feats, acc, slot_list, uses)
  local lo, hi = {}, {}
  for i, feat in ipairs(feats) do
    local a = acc[i]
    if a.hi > a.lo then
      for _, slot in ipairs(feat.slots) do
        if lo[slot.id] == nil or a.lo < lo[slot.id] then lo[slot.id] = a.lo end
        if hi[slot.id] == nil or a.hi > hi[slot.id] then hi[slot.id] = a.hi end
      end
    end
  end
  local total = 0
  for id, l in pairs(lo) do total = total + hi[id] - l end
  if total == 0 then return end
  local hlen = redis.call('HLEN', key)
  if hlen == 0 then return end
  if hlen <= total then
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      local field = all[i]
      local p = string.find(field, ':', 1, true)
      local u = p and uses[string.sub(field, 1, p - 1)]
      if u then
        local n = tonumber(string.sub(field, p + 1))  -- nil for '<slot>:h'
        if n then accumulate(feats, acc, u, n, all[i + 1]) end
      end
    end
    return
  end
  local fields, slot_of, n_of = {}, {}, {}
  for _, slot in ipairs(slot_list) do
    if lo[slot.id] ~= nil then
      for n = lo[slot.id], hi[slot.id] - 1 do
        fields[#fields + 1] = slot.id .. ':' .. int_text(n)
        slot_of[#fields] = slot.id
        n_of[#fields] = n
      end
    end
  end
  local values = hmget_chunked(key, fields)
  for j = 1, #fields do
    if values[j] then accumulate(feats, acc, uses[slot_of[j]], n_of[j], values[j]) end
  end
end

-- features_get (no-writes): feature values of one or more entities of one type, as of a time.
--
-- Purpose: the online read, callable directly (FCALL_RO) by any service. "As of t" means
--   the events of whole buckets before the bucket holding t (only events before t count), the
--   same definition the offline path computes, so a value read here for (entity, t) equals
--   the training value for (entity, t).
--
-- KEYS[1..n]  entity state hashes of one entity type (u:{user}:feat, i:{item}:feat or
--             u:{user}:featc:<category>; HASH); a cluster client sends one slot per call
-- ARGV[1] spec        str  compiled feature spec (JSON, as for features_ingest)
-- ARGV[2] as_of       str  '' or 'now' (server time), 'latest' (1 ms after each entity's newest
--                          event: all of its events in closed buckets), or ms since the epoch
-- ARGV[3] n_features  int  >= 1
-- ARGV[4..3+n]        str  feature names, all of one entity type
-- Reply: per key, in KEYS order: as_of_ms (string), then one value per feature: count and
--   integer sums as integer strings, other values as float strings (exact round trip), nil
--   where the value is undefined (mean/ratio without denominator, last/recency without event)
--   or would need trimmed buckets (window starts before the slot's horizon).
-- Errors: ERR_BADARG (bad spec, unknown feature, mixed entity types, bad as_of). Writes nothing.
local function features_get(keys, argv)
  local spec = feature_spec(argv[1])
  local as_of = argv[2] or ''
  local n = int(argv[3], 'n_features')
  if n < 1 or #argv ~= 3 + n then fail('ERR_BADARG', 'expected n_features >= 1 names') end
  local feats, ent = {}, nil
  local slot_list, listed = {}, {}
  for i = 1, n do
    local feat = spec.feats[argv[3 + i]]
    if feat == nil then fail('ERR_BADARG', 'unknown feature ' .. tostring(argv[3 + i])) end
    if ent ~= nil and feat.ent ~= ent then fail('ERR_BADARG', 'features of one entity type per call') end
    ent = feat.ent
    feats[i] = feat
    for _, slot in ipairs(feat.slots) do
      if not listed[slot.id] then slot_list[#slot_list + 1] = slot; listed[slot.id] = true end
    end
  end
  local fixed = nil
  if as_of == '' or as_of == 'now' then
    fixed = now_ms()
  elseif as_of ~= 'latest' then
    fixed = int(as_of, 'as_of')
    if fixed < 0 then fail('ERR_BADARG', 'as_of must be >= 0') end
  end
  local uses = {}
  for i, feat in ipairs(feats) do
    for role, slot in ipairs(feat.slots) do
      uses[slot.id] = uses[slot.id] or {}
      table.insert(uses[slot.id], {i, role})
    end
  end
  local meta_fields = {'_w'}
  for i, slot in ipairs(slot_list) do meta_fields[i + 1] = slot.id .. ':h' end

  local reply = {}
  for _, key in ipairs(keys) do
    local meta = redis.call('HMGET', key, unpack(meta_fields))
    local t = fixed
    if t == nil then
      t = tonumber(meta[1])
      if t == nil then t = now_ms() else t = t + 1 end
    end
    local newest = tonumber(meta[1])  -- nil: the entity has no state
    local horizon = {}
    for j, slot in ipairs(slot_list) do horizon[slot.id] = tonumber(meta[j + 1]) end
    local acc, any = {}, false
    for i, feat in ipairs(feats) do
      local s, e = feature_window(feat, t)
      local a = {lo = s / feat.b, hi = e / feat.b, t = t, x = 0, y = 0}
      for _, slot in ipairs(feat.slots) do
        local h = horizon[slot.id]
        if h ~= nil and s < h then a.trimmed = true end
      end
      -- No bucket lies after the newest event's: a window past it is empty, unread.
      if newest == nil then
        a.hi = a.lo
      elseif a.hi > math.floor(newest / feat.b) + 1 then
        a.hi = math.max(a.lo, math.floor(newest / feat.b) + 1)
      end
      if a.trimmed then a.lo, a.hi = 0, 0 end
      if a.hi > a.lo then any = true end
      acc[i] = a
    end
    if any then read_entity(key, feats, acc, slot_list, uses) end
    reply[#reply + 1] = int_text(t)
    for i, feat in ipairs(feats) do
      if acc[i].trimmed then
        reply[#reply + 1] = false
      else
        reply[#reply + 1] = feature_result(feat, acc[i])
      end
    end
  end
  return reply
end

redis.register_function{function_name = 'features_ingest', callback = features_ingest}
redis.register_function{function_name = 'features_get', callback = features_get,
  flags = {'no-writes'}}
