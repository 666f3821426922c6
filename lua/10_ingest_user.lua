-- ingest_user: apply a batch of shopper events to per-user state (one or more users).
--
-- Purpose: exactly-once effect of each event on the user's live state: dedup, session JSON,
--   decayed long-term affinities, "seen" Bloom filter. Returns the per-event outcome and the
--   co-occurrence pairs the events produced, which the client forwards to `ingest_aggregates`
--   (item keys live in other slots). All input is validated before the first write, so a bad
--   call writes nothing.
--
-- KEYS, 4 per user group g (g = 0..G-1), all with the same hash tag {user}:
--   KEYS[4g+1] u:{user}:session  JSON  current session document (see docs/keys.md)
--   KEYS[4g+2] u:{user}:dedup    ZSET  event_id -> ingest time ms (dedup window)
--   KEYS[4g+3] u:{user}:aff      ZSET  "cat:<c>" / "price:<band>" -> forward-decayed weight
--   KEYS[4g+4] u:{user}:seen     BF    items the user has interacted with
--   In cluster mode every call holds one slot's users only; standalone may mix users.
--
-- ARGV (config, then groups):
--   [1]  session_ttl_s      int  sliding TTL of the session document
--   [2]  user_ttl_s         int  sliding TTL of aff / seen
--   [3]  dedup_window_ms    int  event ids are remembered this long (ingest time) ...
--   [4]  dedup_cap          int  ... and at most this many per user (oldest dropped)
--   [5]  recent_cap         int  items kept in session.recent
--   [6]  searches_cap       int  queries kept in session.searches
--   [7]  aff_epoch_ms       int  forward-decay epoch (see 00_common.lua)
--   [8]  aff_half_life_ms   int  affinity half-life
--   [9]  co_window_ms       int  max |ts difference| for a co-occurrence pair
--   [10] co_recent_n        int  pair a new item with at most this many recent session items
--   [11] bloom_capacity     int  seen-filter capacity (NONSCALING: fixed size)
--   [12] bloom_error        num  seen-filter false-positive rate at capacity
--   [13] weights            str  "view=1,click=2,..." affinity weight per event type
--   [14] cart_cap           int  cart lines kept (the oldest line is dropped beyond it)
--   [15] n_groups           int
--   then per group: n_events, then per event:
--     event_id, type, session_id, ts_ms, query, n_items, then n_items x (item, qty, price, category)
--
-- Reply: { statuses, a1, b1, kind1, w1, a2, ... }
--   statuses: one char per event in input order: 'A' accepted, 'D' duplicate
--   pairs: item a, item b, kind ('v' co-viewed, 'b' co-bought), weight (string)
-- Errors: ERR_BADARG (bad field; nothing written), ERR_KEYS (key count mismatch).
-- Writes: session (JSON.SET, EXPIRE session_ttl_s), dedup (ZADD; trim and PEXPIRE
--   window + 10 min), aff (ZINCRBY, EXPIRE user_ttl_s), seen (BF.INSERT NONSCALING, EXPIRE
--   user_ttl_s). Maintenance (dedup trim, TTL refresh of dedup/aff/seen) runs when a session
--   document starts, when a key is first written in the session, and then at most every
--   MAINT_EVERY_MS of server time or MAINT_EVENTS events: the session (30 min TTL) carries
--   that bookkeeping, so a hot user pays for it once, not on every event.

local ITEM_EVENTS = {view = true, click = true, add_to_cart = true, purchase = true}
local MAINT_EVERY_MS = 600000
local MAINT_EVENTS = 256
local COVIEW_EVENTS = {view = true, click = true, add_to_cart = true}

local function parse_weights(spec)
  local w = {}
  for name, value in string.gmatch(spec, '([%w_]+)=([%d%.%-]+)') do
    w[name] = num(value, 'weights.' .. name)
  end
  return w
end

-- Validation pass: turn ARGV into tables, raising before anything is written.
local function parse_groups(keys, argv)
  local n_groups = int(argv[15], 'n_groups')
  if #keys ~= 4 * n_groups then
    fail('ERR_KEYS', 'expected ' .. (4 * n_groups) .. ' keys for ' .. n_groups .. ' groups, got ' .. #keys)
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
        session_id = argv[pos + 2],
        ts = int(argv[pos + 3], 'ts'),
        query = argv[pos + 4],
        items = {},
      }
      if not EVENT_TYPES[ev.type] then fail('ERR_BADARG', 'unknown event type ' .. tostring(ev.type)) end
      local n_items = int(argv[pos + 5], 'n_items')
      pos = pos + 6
      for i = 1, n_items do
        ev.items[i] = {
          item = nonempty(argv[pos], 'item_id'),
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
      session = keys[4 * g - 3], dedup = keys[4 * g - 2], aff = keys[4 * g - 1], seen = keys[4 * g],
      events = events,
    }
  end
  if argv[pos] ~= nil then fail('ERR_BADARG', 'trailing arguments after the last group') end
  return groups
end

local function new_session(session_id, ts)
  return {
    session_id = session_id, started_ts = ts, last_ts = ts,
    recent = {}, cart = {}, searches = {}, purchased = {}, counters = {},
  }
end

-- Insert/refresh an {item, ts, type} entry keeping `list` newest first, unique by item, capped.
local function upsert_recent(list, item, ts, kind, cap)
  for i, entry in ipairs(list) do
    if entry.item == item then
      if entry.ts >= ts then return end -- an older, late event changes nothing
      table.remove(list, i)
      break
    end
  end
  -- Before the first entry that is not newer: on equal times the later event goes first.
  local at = #list + 1
  for i, entry in ipairs(list) do
    if entry.ts <= ts then at = i; break end
  end
  table.insert(list, at, {item = item, ts = ts, type = kind})
  while #list > cap do table.remove(list) end
end

local function push_search(list, query, ts, cap)
  local at = #list + 1
  for i, entry in ipairs(list) do
    if entry.ts <= ts then at = i; break end
  end
  table.insert(list, at, {q = query, ts = ts})
  while #list > cap do table.remove(list) end
end

-- Pairs of `item` with recent session items (before this event), newest first.
local function collect_pairs(pairs_out, list, item, ts, kind, window, limit)
  local n = 0
  for _, entry in ipairs(list) do
    if n >= limit then break end
    if entry.item ~= item and math.abs(entry.ts - ts) <= window then
      pairs_out[#pairs_out + 1] = {entry.item, item, kind}
      n = n + 1
    end
  end
end

-- Keep at most `cap` cart lines: drop the least recently touched (abandoned) ones.
local function trim_cart(cart, cap)
  local n, oldest, oldest_ts = 0, nil, nil
  for item, line in pairs(cart) do
    n = n + 1
    if oldest_ts == nil or line.ts < oldest_ts or (line.ts == oldest_ts and item < oldest) then
      oldest, oldest_ts = item, line.ts
    end
  end
  if n > cap then
    cart[oldest] = nil
    trim_cart(cart, cap)
  end
end

local function apply_to_session(doc, ev, cfg, pairs_out)
  doc.counters[ev.type] = (doc.counters[ev.type] or 0) + 1
  if ev.ts > doc.last_ts then doc.last_ts = ev.ts end
  if ev.type == 'search' then
    if ev.query ~= nil and ev.query ~= '' then push_search(doc.searches, ev.query, ev.ts, cfg.searches_cap) end
    return
  end
  for _, it in ipairs(ev.items) do
    if COVIEW_EVENTS[ev.type] then
      collect_pairs(pairs_out, doc.recent, it.item, ev.ts, 'v', cfg.co_window, cfg.co_recent_n)
    elseif ev.type == 'purchase' then
      collect_pairs(pairs_out, doc.purchased, it.item, ev.ts, 'b', cfg.co_window, cfg.co_recent_n)
    end
    if ev.type == 'add_to_cart' then
      local line = doc.cart[it.item] or {qty = 0, price = it.price, ts = ev.ts}
      line.qty = line.qty + math.max(it.qty, 1)
      if ev.ts >= line.ts then line.price = it.price; line.ts = ev.ts end
      doc.cart[it.item] = line
      trim_cart(doc.cart, cfg.cart_cap)
    elseif ev.type == 'remove_from_cart' then
      local line = doc.cart[it.item]
      if line ~= nil then
        line.qty = line.qty - math.max(it.qty, 1)
        if line.qty <= 0 then doc.cart[it.item] = nil end
      end
    elseif ev.type == 'purchase' then
      doc.cart[it.item] = nil
      upsert_recent(doc.purchased, it.item, ev.ts, 'purchase', cfg.recent_cap)
    end
    if ITEM_EVENTS[ev.type] then
      upsert_recent(doc.recent, it.item, ev.ts, ev.type, cfg.recent_cap)
    end
  end
end

local function ingest_user(keys, argv)
  local cfg = {
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
  local groups = parse_groups(keys, argv)
  local now = now_ms()
  local statuses = {}
  local reply_pairs = {}

  for _, grp in ipairs(groups) do
    local raw = redis.call('JSON.GET', grp.session, '$')
    local doc = nil
    if raw then doc = cjson.decode(raw)[1] end
    local doc_dirty = false
    local seen_items = {}
    local aff_inc, aff_order = {}, {}
    local accepted_any = false

    -- Late events must still land in order: apply accepted events sorted by event time.
    local accepted = {}
    for seq, ev in ipairs(grp.events) do
      if redis.call('ZADD', grp.dedup, 'NX', now, ev.id) == 1 then
        statuses[#statuses + 1] = 'A'
        ev.seq = seq
        accepted[#accepted + 1] = ev
        accepted_any = true
      else
        statuses[#statuses + 1] = 'D'
      end
    end
    -- Stable: equal times keep input order (all lines of one invoice share a time).
    table.sort(accepted, function(a, b)
      if a.ts == b.ts then return a.seq < b.seq end
      return a.ts < b.ts
    end)

    -- Bookkeeping carried by the session document (see the contract above).
    local maint = doc == nil or doc.maint == nil or now - doc.maint.ts >= MAINT_EVERY_MS
      or doc.maint.n >= MAINT_EVENTS
    local fresh = {}  -- keys first written in this session: they need their TTL now

    for _, ev in ipairs(accepted) do
      -- Session: a newer session id starts a new document (the cart carries over);
      -- a late event of an older session leaves the current document alone.
      local pairs_out = {}
      if doc == nil then
        doc = new_session(ev.session_id, ev.ts)
        maint = true
      elseif doc.session_id ~= ev.session_id and ev.session_id ~= '' then
        if ev.ts >= doc.last_ts then
          local cart = doc.cart
          doc = new_session(ev.session_id, ev.ts)
          doc.cart = cart
          maint = true
        else
          ev.skip_session = true -- late event from an older session: session untouched
        end
      end
      if not ev.skip_session then
        apply_to_session(doc, ev, cfg, pairs_out)
        doc_dirty = true
      end
      for _, p in ipairs(pairs_out) do
        reply_pairs[#reply_pairs + 1] = p[1]
        reply_pairs[#reply_pairs + 1] = p[2]
        reply_pairs[#reply_pairs + 1] = p[3]
        reply_pairs[#reply_pairs + 1] = '1'
      end

      -- Affinity increments are summed per member: one ZINCRBY per member and call.
      local w = cfg.weights[ev.type] or 0
      for _, it in ipairs(ev.items) do
        if ITEM_EVENTS[ev.type] then seen_items[#seen_items + 1] = it.item end
        if w ~= 0 then
          local inc = forward_weight(w, ev.ts, cfg.aff_epoch, cfg.aff_half_life)
          local band = price_band(it.price)
          local members = {}
          if it.category ~= nil and it.category ~= '' then members[1] = 'cat:' .. it.category end
          if band ~= nil then members[#members + 1] = 'price:' .. band end
          for _, m in ipairs(members) do
            if aff_inc[m] == nil then aff_inc[m] = 0; aff_order[#aff_order + 1] = m end
            aff_inc[m] = aff_inc[m] + inc
          end
        end
      end
    end

    local flags = (doc and doc.ttl_set) or {}
    for _, m in ipairs(aff_order) do
      redis.call('ZINCRBY', grp.aff, tostring(aff_inc[m]), m)
    end
    if #aff_order > 0 and (maint or not flags.aff) then
      redis.call('EXPIRE', grp.aff, cfg.user_ttl); fresh.aff = true
    end
    if #seen_items > 0 then
      redis.call('BF.INSERT', grp.seen, 'CAPACITY', cfg.bloom_capacity, 'ERROR', cfg.bloom_error,
        'NONSCALING', 'ITEMS', unpack(seen_items))
      if maint or not flags.seen then
        redis.call('EXPIRE', grp.seen, cfg.user_ttl); fresh.seen = true
      end
    end
    if accepted_any then
      -- The count cap holds on every call (ZCARD is O(1)); age trimming and the TTL (window
      -- plus the maintenance interval, so ids added since the last refresh keep their 24 h)
      -- are maintenance.
      if redis.call('ZCARD', grp.dedup) > cfg.dedup_cap then
        redis.call('ZREMRANGEBYRANK', grp.dedup, 0, -(cfg.dedup_cap + 1))
      end
      if maint or not flags.dedup then
        redis.call('ZREMRANGEBYSCORE', grp.dedup, '-inf', '(' .. (now - cfg.dedup_window))
        redis.call('PEXPIRE', grp.dedup, cfg.dedup_window + MAINT_EVERY_MS)
        fresh.dedup = true
      end
    end
    if doc_dirty then
      if maint then
        doc.maint = {ts = now, n = 0}
        doc.ttl_set = {}
      end
      doc.maint.n = doc.maint.n + #accepted
      doc.ttl_set = doc.ttl_set or {}
      for name, _ in pairs(fresh) do doc.ttl_set[name] = true end
      redis.call('JSON.SET', grp.session, '$', encode_doc(doc))
      redis.call('EXPIRE', grp.session, cfg.session_ttl)
    end
  end

  local reply = {table.concat(statuses)}
  for _, v in ipairs(reply_pairs) do reply[#reply + 1] = v end
  return reply
end

redis.register_function{function_name = 'ingest_user', callback = ingest_user}
