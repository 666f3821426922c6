-- Shopper state: the per-user half of `ingest_partition` (lua/80_ingest.lua, which holds the
-- registered Function and its full contract; this file only defines local helpers).
--
-- Purpose: exactly-once effect of each event on the user's live state: dedup, session JSON,
--   decayed long-term affinities, "seen" Bloom filter; produces each accepted event's
--   co-occurrence pairs, which `ingest_partition` writes into the partition log next to the
--   event (the aggregate workers apply them to the item shards).
--
-- Hot path (why it looks like this): the session document is never decoded or re-encoded
--   whole. One JSON.MGET of a small "hot" projection (session id, last_ts, counters, head,
--   bhead, m) serves every user of the call; each user's changes go out as one JSON.MERGE patch
--   built as text. The item maps are keyed by item, so a patch can add, move or delete one
--   entry without reading the others. A full map is read only for late events (older than the
--   session's last_ts) and for the amortised trim (see "Caps"). Session format: docs/keys.md.
--
-- KEYS, 4 per user group g (g = 0..G-1) after `kb` leading keys, all with the partition's tag:
--   KEYS[kb+4g+1] u:{p<n>}:<user>:session  JSON  current session document (see docs/keys.md)
--   KEYS[kb+4g+2] u:{p<n>}:<user>:dedup    ZSET  event_id -> ingest time ms (dedup window)
--   KEYS[kb+4g+3] u:{p<n>}:<user>:aff      ZSET  "cat:<c>" / "price:<band>" -> decayed weight
--   KEYS[kb+4g+4] u:{p<n>}:<user>:seen     BF    items the user has interacted with
--
-- ARGV (config, then groups):
--   [1]  session_ttl_s      int  sliding TTL of the session document (refreshed at most every
--                               TTL_EVERY_MS of server time)
--   [2]  user_ttl_s         int  sliding TTL of aff / seen
--   [3]  dedup_window_ms    int  event ids are remembered this long (ingest time) ...
--   [4]  dedup_cap          int  ... and at most this many per user (oldest dropped)
--   [5]  recent_cap         int  items kept in session.recent and session.purchased
--   [6]  searches_cap       int  queries kept in session.searches
--   [7]  aff_epoch_ms       int  forward-decay epoch (see 00_common.lua)
--   [8]  aff_half_life_ms   int  affinity half-life
--   [9]  co_window_ms       int  max |ts difference| for a co-occurrence pair
--   [10] co_recent_n        int  pair a new item with at most this many recent session items
--   [11] bloom_capacity     int  seen-filter first capacity (scales to 15x, then stops)
--   [12] bloom_error        num  seen-filter false-positive rate at capacity
--   [13] weights            str  "view=1,click=2,..." affinity weight per event type
--   [14] cart_cap           int  cart lines kept (the least recently touched line is dropped)
--   [15] n_groups           int
--   then per group: n_events, then per event:
--     event_id, type, session_id, ts_ms, query, n_items, then n_items x (item, qty, price, category)
--   item ids and session ids: 1-64 characters of [A-Za-z0-9._:@/+=-] (they are written into
--   JSON text without escaping); queries and categories are free text.
--
-- (ARGV[1..15] and the groups: the first part of ingest_partition's ARGV.)
-- Writes: session (JSON.SET for a new document, else one JSON.MERGE; EXPIRE session_ttl_s),
--   dedup (ZADD; trim and PEXPIRE window + 10 min), aff (ZINCRBY, EXPIRE user_ttl_s), seen
--   (BF.INSERT scaling to 15x capacity, see seen_insert; EXPIRE user_ttl_s). Maintenance (dedup trim, TTL refresh of
--   dedup/aff/seen) runs when a session document starts, when a key is first written in the
--   session, and then at most every MAINT_EVERY_MS of server time or MAINT_EVENTS events: the
--   session (30 min TTL) carries that bookkeeping, so a hot user pays for it once.
-- Caps: recent/purchased/searches hold the newest cap entries after each trim and gain at most
--   cap - 1 entries before the next one (m.added counts writes), so never more than 2 x cap - 1;
--   readers order by (ts, seq) and take the newest cap. The cart holds at most cart_cap lines.

local ITEM_EVENTS = {view = true, click = true, add_to_cart = true, purchase = true}
local CART_EVENTS = {add_to_cart = true, remove_from_cart = true, purchase = true}
local COVIEW_EVENTS = {view = true, click = true, add_to_cart = true}
local TYPE_ORDER = {'view', 'click', 'add_to_cart', 'remove_from_cart', 'purchase', 'search'}
local MAINT_EVERY_MS = 600000
local MAINT_EVENTS = 256
local TTL_EVERY_MS = 60000
local HOT_PATH = "$['session_id','last_ts','counters','head','bhead','m']"
local MAPS = {'recent', 'purchased', 'searches'}
local ADDED_FIELDS = {'ra', 'pa', 'sa'}  -- m.<field> counts writes to MAPS[i] since its trim
local UNSAFE_ID = '[^%w%._:@/%+=%-]'

local function parse_weights(spec)
  local w = {}
  for name, value in string.gmatch(spec, '([%w_]+)=([%d%.%-]+)') do
    w[name] = num(value, 'weights.' .. name)
  end
  return w
end

local function safe_id(value, name)
  nonempty(value, name)
  if #value > 64 or string.find(value, UNSAFE_ID) then
    fail('ERR_BADARG', name .. ' must be 1-64 characters of [A-Za-z0-9._:@/+=-], got ' .. value)
  end
  return value
end

-- Validation pass: turn ARGV into tables, raising before anything is written.
-- `kb`: KEYS index before the first group's keys. Returns the groups and the next ARGV position.
local function parse_groups(keys, argv, kb)
  local n_groups = int(argv[15], 'n_groups')
  if #keys < kb + 4 * n_groups then
    fail('ERR_KEYS', 'expected ' .. (4 * n_groups) .. ' user keys for ' .. n_groups .. ' groups, got ' .. (#keys - kb))
  end
  local pos = 16
  local groups = {}
  for g = 1, n_groups do
    local n_events = int(argv[pos], 'n_events'); pos = pos + 1
    local events = {}
    for e = 1, n_events do
      local ev = {
        id = nonempty(argv[pos], 'event_id'),
        type = argv[pos + 1],
        session_id = argv[pos + 2] or '',
        ts = int(argv[pos + 3], 'ts'),
        query = argv[pos + 4],
        items = {},
      }
      if not EVENT_TYPES[ev.type] then fail('ERR_BADARG', 'unknown event type ' .. tostring(ev.type)) end
      if ev.session_id ~= '' then safe_id(ev.session_id, 'session_id') end
      local n_items = int(argv[pos + 5], 'n_items')
      pos = pos + 6
      for i = 1, n_items do
        ev.items[i] = {
          item = safe_id(argv[pos], 'item_id'),
          qty = num(argv[pos + 1], 'qty'),
          price = num(argv[pos + 2], 'price'),
          category = argv[pos + 3],
        }
        pos = pos + 4
      end
      if ITEM_EVENTS[ev.type] or ev.type == 'remove_from_cart' then
        if n_items == 0 then fail('ERR_BADARG', ev.type .. ' event ' .. ev.id .. ' needs an item') end
      end
      events[e] = ev
    end
    groups[g] = {
      session = keys[kb + 4 * g - 3], dedup = keys[kb + 4 * g - 2], aff = keys[kb + 4 * g - 1],
      seen = keys[kb + 4 * g], events = events,
    }
  end
  return groups, pos
end

-- Marks duplicates (ev.dup) without writing: ids already in the user's dedup set, and repeats
-- of an id within the call. ZADD later writes exactly the ids found new here.
local function mark_duplicates(groups)
  for _, grp in ipairs(groups) do
    if #grp.events > 0 then
      local ids = {}
      for i, ev in ipairs(grp.events) do ids[i] = ev.id end
      local scores = redis.call('ZMSCORE', grp.dedup, unpack(ids))
      local in_call = {}
      for i, ev in ipairs(grp.events) do
        ev.dup = scores[i] ~= false or in_call[ev.id] == true
        in_call[ev.id] = true
      end
    end
  end
end

-- The hot projection of one session (a JSON.MGET element), or nil: no document, or one in an
-- older format (it is replaced by a new session on the next event).
local function decode_hot(raw)
  if not raw then return nil end
  local ok, v = pcall(cjson.decode, raw)
  if not ok or type(v) ~= 'table' or #v ~= 6 or type(v[6]) ~= 'table' or v[6].seq == nil then
    return nil
  end
  local m = v[6]
  return {
    sid = v[1], last_ts = v[2], counters = v[3], head = v[4], bhead = v[5],
    seq = m.seq, added = {m.ra, m.pa, m.sa}, maint_ts = m.maint_ts, maint_n = m.maint_n,
    ttl_ts = m.ttl_ts, ttl_set = m.ttl_set, started_ts = nil,
  }
end

-- A new session (no document, or a newer session id): everything is known, maps are empty.
local function start_session(st, session_id, ts)
  st.reset = true
  st.sid, st.started_ts, st.last_ts = session_id, ts, ts
  st.counters, st.head, st.bhead = {}, {}, {}
  st.seq, st.added = 0, {0, 0, 0}
  st.known = {recent = {}, purchased = {}, searches = {}}
  st.changes = {recent = {}, purchased = {}, searches = {}}
  st.deleted = {recent = {}, purchased = {}, searches = {}}
  st.counters_changed, st.heads_changed = {}, {head = true, bhead = true}
end

-- Head rows {item, ts} of the newest `size` entries of a map.
local function head_of(entries, size)
  local head = {}
  for i, row in ipairs(newest(entries, size)) do head[i] = {row[1], row[2]} end
  return head
end

-- Known entries plus this call's changes, minus deletions (needs st.known).
local function current_map(st, name)
  local out = {}
  for item, e in pairs(st.known[name]) do
    if not st.deleted[name][item] then out[item] = e end
  end
  for item, e in pairs(st.changes[name]) do out[item] = e end
  return out
end

-- Write `entry` ({ts, ..., seq}) for `key` in map `name` unless a newer or equal one is there.
-- In-order events (ts >= last_ts) are newest by definition; late ones need the known map.
-- Returns whether it was written.
local function put_entry(st, name, key, entry, late)
  if late then
    local cur = st.changes[name][key]
    if cur == nil and not st.deleted[name][key] then cur = st.known[name][key] end
    if cur ~= nil and cur[1] >= entry[1] then return false end
  end
  st.changes[name][key] = entry
  st.deleted[name][key] = nil
  return true
end

-- Move `item` to the front of a head list ({item, ts} rows, newest first), keep `size`.
local function head_front(head, item, ts, size)
  for i = #head, 1, -1 do
    if head[i][1] == item then table.remove(head, i) end
  end
  table.insert(head, 1, {item, ts})
  while #head > size do table.remove(head) end
end

-- Pairs of `item` with the head's items (before this event), newest first.
local function collect_pairs(pairs_out, head, item, ts, kind, window, limit)
  local n = 0
  for _, row in ipairs(head) do
    if n >= limit then break end
    if row[1] ~= item and math.abs(row[2] - ts) <= window then
      pairs_out[#pairs_out + 1] = {row[1], item, kind}
      n = n + 1
    end
  end
end

-- Keep at most `cap` cart lines: drop the least recently touched (abandoned) ones.
local function trim_cart(cart, cap, dirty)
  local n, oldest, oldest_ts = 0, nil, nil
  for item, line in pairs(cart) do
    n = n + 1
    if oldest_ts == nil or line.ts < oldest_ts or (line.ts == oldest_ts and item < oldest) then
      oldest, oldest_ts = item, line.ts
    end
  end
  if n > cap then
    cart[oldest] = nil
    dirty[oldest] = true
    trim_cart(cart, cap, dirty)
  end
end

-- Write an item's entry into MAPS[i] (recent / purchased) and keep that map's head current.
local HEADS = {'head', 'bhead'}
local function record(st, i, item, entry, ts, late, head_size)
  local name = MAPS[i]
  if not put_entry(st, name, item, entry, late) then return end
  st.seq = st.seq + 1
  st.added[i] = st.added[i] + 1
  if late then
    st[HEADS[i]] = head_of(current_map(st, name), head_size)
  else
    head_front(st[HEADS[i]], item, ts, head_size)
  end
  st.heads_changed[HEADS[i]] = true
end

local function apply_event(st, ev, cfg, pairs_out)
  st.counters[ev.type] = (st.counters[ev.type] or 0) + 1
  st.counters_changed[ev.type] = true
  local late = ev.ts < st.last_ts
  if ev.ts > st.last_ts then st.last_ts = ev.ts end
  if ev.type == 'search' then
    if ev.query ~= nil and ev.query ~= '' then
      if put_entry(st, 'searches', ev.query, {ev.ts, st.seq + 1}, late) then
        st.seq = st.seq + 1
        st.added[3] = st.added[3] + 1
      end
    end
    return
  end
  local head_size = cfg.co_recent_n + 1
  for _, it in ipairs(ev.items) do
    if COVIEW_EVENTS[ev.type] then
      collect_pairs(pairs_out, st.head, it.item, ev.ts, 'v', cfg.co_window, cfg.co_recent_n)
    elseif ev.type == 'purchase' then
      collect_pairs(pairs_out, st.bhead, it.item, ev.ts, 'b', cfg.co_window, cfg.co_recent_n)
    end
    if ev.type == 'add_to_cart' then
      local line = st.cart[it.item] or {qty = 0, price = it.price, ts = ev.ts}
      line.qty = line.qty + math.max(it.qty, 1)
      if ev.ts >= line.ts then line.price = it.price; line.ts = ev.ts end
      st.cart[it.item] = line
      st.cart_dirty[it.item] = true
      trim_cart(st.cart, cfg.cart_cap, st.cart_dirty)
    elseif ev.type == 'remove_from_cart' then
      local line = st.cart[it.item]
      if line ~= nil then
        line.qty = line.qty - math.max(it.qty, 1)
        if line.qty <= 0 then st.cart[it.item] = nil end
        st.cart_dirty[it.item] = true
      end
    elseif ev.type == 'purchase' then
      if st.cart[it.item] ~= nil then
        st.cart[it.item] = nil
        st.cart_dirty[it.item] = true
      end
      record(st, 2, it.item, {ev.ts, st.seq + 1}, ev.ts, late, head_size)
    end
    if ITEM_EVENTS[ev.type] then
      record(st, 1, it.item, {ev.ts, ev.type, st.seq + 1}, ev.ts, late, head_size)
    end
  end
end

-- Drop the oldest entries of map `name` beyond `cap` (reads the full map when not known).
local function trim_map(st, name, cap)
  local rows = newest(current_map(st, name), math.huge)
  for i = cap + 1, #rows do
    local item = rows[i][1]
    st.changes[name][item] = nil
    if st.known[name][item] ~= nil then st.deleted[name][item] = true end
  end
end

-- The whole document (new session) or the merge patch (existing one: only what changed; a
-- JSON merge patch replaces arrays and merges objects, null deletes). cjson (C) encodes it:
-- measured 2x faster than building the text in Lua.
local function session_json(st)
  local doc = {}
  if st.reset then
    doc.session_id, doc.started_ts = st.sid, st.started_ts
  end
  doc.last_ts = st.last_ts
  local counters = {}
  for name, _ in pairs(st.counters_changed) do counters[name] = st.counters[name] end
  if st.reset then counters = st.counters end
  doc.counters = counters
  for _, name in ipairs(MAPS) do
    if st.reset or next(st.changes[name]) ~= nil or next(st.deleted[name]) ~= nil then
      local part = {}
      for key, e in pairs(st.changes[name]) do part[key] = e end
      for key, _ in pairs(st.deleted[name]) do part[key] = cjson.null end
      doc[name] = part
    end
  end
  if st.reset then
    doc.cart = st.cart
  elseif next(st.cart_dirty) ~= nil then
    local part = {}
    for item, _ in pairs(st.cart_dirty) do part[item] = st.cart[item] or cjson.null end
    doc.cart = part
  end
  -- Only a head that changed goes out: a changed head is never empty, so the patch needs no
  -- empty-array fix (encode_doc only scans for one when a list is empty: new sessions).
  for _, name in ipairs(HEADS) do
    if st.heads_changed[name] then doc[name] = st[name] end
  end
  local m = {seq = st.seq, maint_n = st.maint_n}
  for i, field in ipairs(ADDED_FIELDS) do
    if st.reset or st.added[i] ~= st.added0[i] then m[field] = st.added[i] end
  end
  if st.reset or st.maint then m.maint_ts, m.ttl_set = st.maint_ts, st.ttl_set end
  if st.reset or st.ttl_refreshed then m.ttl_ts = st.ttl_ts end
  if st.ttl_set ~= st.ttl_set0 then m.ttl_set = st.ttl_set end
  doc.m = m
  return encode_doc(doc)
end

-- Reads one path of the session ('{}' when absent) as a Lua table.
local function read_path(key, path)
  local raw = redis.call('JSON.GET', key, path)
  local v = raw and cjson.decode(raw)[1]
  if type(v) ~= 'table' then return {} end
  return v
end

local function session_state(hot, grp, accepted, now)
  local st = {reset = false, cart_dirty = {}, cart = {}}
  if hot ~= nil then
    for k, v in pairs(hot) do st[k] = v end
    st.known = {recent = {}, purchased = {}, searches = {}}
    st.changes = {recent = {}, purchased = {}, searches = {}}
      st.deleted = {recent = {}, purchased = {}, searches = {}}
    st.maps_known = false
    st.counters_changed, st.heads_changed = {}, {}
    st.added0, st.ttl_set0 = {st.added[1], st.added[2], st.added[3]}, st.ttl_set
    -- What this call's events need beyond the hot projection.
    local need_cart, need_maps = false, false
    for _, ev in ipairs(accepted) do
      if CART_EVENTS[ev.type] then need_cart = true end
      if ev.session_id ~= '' and ev.session_id ~= hot.sid and ev.ts >= hot.last_ts then
        need_cart = true  -- a new session carries the cart over
      elseif ev.ts < hot.last_ts then
        need_maps = true
      end
    end
    if need_cart then st.cart = read_path(grp.session, '$.cart') end
    if need_maps then
      for _, name in ipairs(MAPS) do st.known[name] = read_path(grp.session, '$.' .. name) end
      st.maps_known = true
    end
    st.maint = now - st.maint_ts >= MAINT_EVERY_MS or st.maint_n >= MAINT_EVENTS
  else
    start_session(st, '', accepted[1].ts)
    st.maps_known = true
    st.maint_ts, st.maint_n, st.ttl_ts, st.ttl_set = now, 0, now, ''
    st.added0, st.ttl_set0 = {0, 0, 0}, ''
    st.maint = true
    st.new_doc = true
  end
  return st
end

local function ingest_config(argv)
  return {
    session_ttl = int(argv[1], 'session_ttl_s'),
    user_ttl = int(argv[2], 'user_ttl_s'),
    dedup_window = int(argv[3], 'dedup_window_ms'),
    dedup_cap = int(argv[4], 'dedup_cap'),
    recent_cap = int(argv[5], 'recent_cap'),
    searches_cap = int(argv[6], 'searches_cap'),
    aff_epoch = int(argv[7], 'aff_epoch_ms'),
    aff_half_life = int(argv[8], 'aff_half_life_ms'),
    co_window = int(argv[9], 'co_window_ms'),
    co_recent_n = int(argv[10], 'co_recent_n'),
    bloom_capacity = int(argv[11], 'bloom_capacity'),
    bloom_error = num(argv[12], 'bloom_error'),
    weights = parse_weights(argv[13] or ''),
    cart_cap = int(argv[14], 'cart_cap'),
  }
end

-- The shopper-state effects of parsed groups whose duplicates are marked (mark_duplicates).
-- Returns the statuses ('A'/'D' per event, input order) and each group's accepted events in
-- the order they were applied (event time), each with `ev.pairs` (its co-occurrence pairs).
-- Record the group's new event ids in its dedup set (statuses: 'A' accepted, 'D' duplicate)
-- and return the accepted events sorted by event time, so late events still land in order.
local function accept_group(grp, now, statuses)
  local accepted, zadd = {}, {}
  for seq, ev in ipairs(grp.events) do
    if not ev.dup then
      statuses[#statuses + 1] = 'A'
      ev.seq = seq
      accepted[#accepted + 1] = ev
      zadd[#zadd + 1] = now
      zadd[#zadd + 1] = ev.id
    else
      statuses[#statuses + 1] = 'D'
    end
  end
  if #zadd > 0 then redis.call('ZADD', grp.dedup, unpack(zadd)) end
  -- Stable: equal times keep input order (all lines of one invoice share a time).
  table.sort(accepted, function(a, b)
    if a.ts == b.ts then return a.seq < b.seq end
    return a.ts < b.ts
  end)
  return accepted
end

-- Session boundaries: a newer session id starts a new document (the cart carries over); a
-- late event of an older session leaves the current document alone (returns true: skip it).
local function enter_session(st, ev, session_dirty)
  if st.new_doc and st.sid == '' and not session_dirty then
    st.sid, st.started_ts, st.last_ts = ev.session_id, ev.ts, ev.ts
  elseif st.sid ~= ev.session_id and ev.session_id ~= '' then
    if ev.ts < st.last_ts then return true end
    local cart = st.cart
    start_session(st, ev.session_id, ev.ts)
    st.cart = cart
    st.maps_known = true
    st.maint = true
    for item, _ in pairs(cart) do st.cart_dirty[item] = true end
  end
  return false
end

-- The event's items for the seen-filter, and its affinity increments summed per member
-- (one ZINCRBY per member and call).
local function collect_user_sets(ev, cfg, sets)
  local w = cfg.weights[ev.type] or 0
  for _, it in ipairs(ev.items) do
    if ITEM_EVENTS[ev.type] then sets.seen[#sets.seen + 1] = it.item end
    if w ~= 0 then
      local inc = forward_weight(w, ev.ts, cfg.aff_epoch, cfg.aff_half_life)
      local band = price_band(it.price)
      local members = {}
      if it.category ~= nil and it.category ~= '' then members[1] = 'cat:' .. it.category end
      if band ~= nil then members[#members + 1] = 'price:' .. band end
      for _, m in ipairs(members) do
        if sets.aff[m] == nil then sets.aff[m] = 0; sets.order[#sets.order + 1] = m end
        sets.aff[m] = sets.aff[m] + inc
      end
    end
  end
end

-- Affinity, seen-filter and dedup writes with their caps and TTLs. A TTL is set when the
-- session's flags say the key has none yet, or on maintenance; returns the keys given one
-- now ({a=, s=, d=}).
local function write_user_sets(grp, cfg, st, sets, n_accepted, now)
  local maint = st ~= nil and st.maint
  local flags = (st and st.ttl_set) or ''
  local fresh = {}
  for _, m in ipairs(sets.order) do
    redis.call('ZINCRBY', grp.aff, tostring(sets.aff[m]), m)
  end
  if #sets.order > 0 and (maint or not string.find(flags, 'a', 1, true)) then
    redis.call('EXPIRE', grp.aff, cfg.user_ttl); fresh.a = true
  end
  if #sets.seen > 0 then
    seen_insert(grp.seen, cfg.bloom_capacity, cfg.bloom_error, sets.seen)
    if maint or not string.find(flags, 's', 1, true) then
      redis.call('EXPIRE', grp.seen, cfg.user_ttl); fresh.s = true
    end
  end
  if n_accepted > 0 then
    -- The count cap holds on every call (ZCARD is O(1)); age trimming and the TTL (window
    -- plus the maintenance interval, so ids added since the last refresh keep their 24 h)
    -- are maintenance.
    if redis.call('ZCARD', grp.dedup) > cfg.dedup_cap then
      redis.call('ZREMRANGEBYRANK', grp.dedup, 0, -(cfg.dedup_cap + 1))
    end
    if maint or not string.find(flags, 'd', 1, true) then
      redis.call('ZREMRANGEBYSCORE', grp.dedup, '-inf', '(' .. (now - cfg.dedup_window))
      redis.call('PEXPIRE', grp.dedup, cfg.dedup_window + MAINT_EVERY_MS)
      fresh.d = true
    end
  end
  return fresh
end

-- Trim the capped maps, record maintenance and TTL flags, and write the session document
-- (JSON.SET for a new document, JSON.MERGE of the changed parts otherwise).
local function write_session(grp, cfg, st, fresh, n_accepted, now)
  local caps = {cfg.recent_cap, cfg.recent_cap, cfg.searches_cap}
  for i, name in ipairs(MAPS) do
    if st.added[i] >= caps[i] then
      if not st.maps_known then st.known[name] = read_path(grp.session, '$.' .. name) end
      trim_map(st, name, caps[i])
      st.added[i] = 0
    end
  end
  if st.maint then st.maint_ts, st.maint_n, st.ttl_set = now, 0, '' end
  st.maint_n = st.maint_n + n_accepted
  for _, flag in ipairs({'a', 'd', 's'}) do
    if fresh[flag] and not string.find(st.ttl_set, flag, 1, true) then
      st.ttl_set = st.ttl_set .. flag
    end
  end
  local refresh_ttl = st.reset or st.maint or now - st.ttl_ts >= TTL_EVERY_MS
  if refresh_ttl then st.ttl_ts, st.ttl_refreshed = now, true end
  if st.reset then
    redis.call('JSON.SET', grp.session, '$', session_json(st))
  else
    redis.call('JSON.MERGE', grp.session, '$', session_json(st))
  end
  if refresh_ttl then redis.call('EXPIRE', grp.session, cfg.session_ttl) end
end

local function apply_user_groups(cfg, groups, now)
  local statuses = {}
  local applied = {}

  -- One read of every session's hot projection.
  local mget = {}
  for g, grp in ipairs(groups) do mget[g] = grp.session end
  mget[#mget + 1] = HOT_PATH
  local hots = {}
  if #groups > 0 then hots = redis.call('JSON.MGET', unpack(mget)) end

  for g, grp in ipairs(groups) do
    local accepted = accept_group(grp, now, statuses)
    local st = nil
    if #accepted > 0 then st = session_state(decode_hot(hots[g]), grp, accepted, now) end
    local session_dirty = false
    local sets = {seen = {}, aff = {}, order = {}}
    for _, ev in ipairs(accepted) do
      local pairs_out = {}
      if not enter_session(st, ev, session_dirty) then
        apply_event(st, ev, cfg, pairs_out)
        session_dirty = true
      end
      ev.pairs = pairs_out
      collect_user_sets(ev, cfg, sets)
    end
    local fresh = write_user_sets(grp, cfg, st, sets, #accepted, now)
    if session_dirty then write_session(grp, cfg, st, fresh, #accepted, now) end
    applied[#applied + 1] = accepted
  end
  return table.concat(statuses), applied
end
