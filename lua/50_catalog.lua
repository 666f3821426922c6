-- Catalog: product upserts, live price and stock behind guardrails, item reads.
--
-- Every key of one call carries the item's hash tag {item} (one cluster slot):
--   p:{item}        JSON  the product document, indexed by RediSearch under the `p:` prefix
--   i:{item}:guard  HASH  price guard settings: floor, ceiling, locked, lock_reason, updated_ms
--   i:{item}:price  TS    every accepted price (GBP) at server time ms (strictly increasing)
-- The client builds all names (app/catalog/index.py CatalogKeys); the doc shape is in docs/search.md.
--
-- Guardrails (one rule set for the HTTP PATCH, automation and feed loads; docs/search.md):
--   lock     a manual lock pins the price: only source 'manual' may change it
--   bounds   floor <= price <= ceiling, for every source (bounds are set by 'manual' only)
--   velocity sources other than 'manual' may not move the price more than max_change_pct
--            percent away from ANY price the item had during the last window_ms:
--            max(S) * (1 - pct/100) <= new <= min(S) * (1 + pct/100), where S is the price in
--            effect at now - window_ms plus every price recorded since (and the current one).
-- A refused change writes nothing and returns its reason.

local PRICE_SOURCES = {manual = true, automation = true, feed = true}
local PRICE_MAX = 1000000
local STOCK_MAX = 1000000000
-- Relative slack on guard comparisons, so a price exactly at a bound is not refused by
-- floating-point noise (2.55 * 1.3 is 3.3149999999999995 in binary floating point).
local GUARD_EPS = 1e-9

local function price_arg(value, name)
  local p = num(value, name)
  if p <= 0 or p > PRICE_MAX then
    fail('ERR_BADARG', name .. ' must be > 0 and <= ' .. PRICE_MAX .. ', got ' .. tostring(value))
  end
  return p
end

local function stock_arg(value, name)
  local s = int(value, name)
  if s < 0 or s > STOCK_MAX then
    fail('ERR_BADARG', name .. ' must be between 0 and ' .. STOCK_MAX .. ', got ' .. tostring(value))
  end
  return s
end

-- A JSON number for JSON.SET / JSON.MERGE (tostring gives '%.14g': valid JSON for finite values).
local function json_num(n)
  if n == math.floor(n) and math.abs(n) < 1e15 then return string.format('%d', n) end
  return tostring(n)
end

-- Append members to a JSON object given as text: splice('{"a":1}', {{'b', '2'}}) is
-- '{"a":1,"b":2}'. Names are fixed ASCII; values are JSON texts built by this file.
local function splice(obj, members)
  local parts = {}
  for _, m in ipairs(members) do parts[#parts + 1] = '"' .. m[1] .. '":' .. m[2] end
  local body = string.sub(obj, 2, -2)
  if string.match(body, '^%s*$') then return '{' .. table.concat(parts, ',') .. '}' end
  if #parts == 0 then return obj end
  return '{' .. body .. ',' .. table.concat(parts, ',') .. '}'
end

-- TimeSeries values reach Lua as status replies ({ok = '1.65'}) under RESP2.
local function ts_value(v)
  if type(v) == 'table' then v = v.ok end
  return tonumber(v)
end

local function guard_read(guard_key)
  local flat = redis.call('HGETALL', guard_key)
  local g = {locked = false, lock_reason = ''}
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    if f == 'floor' or f == 'ceiling' then g[f] = tonumber(v)
    elseif f == 'locked' then g.locked = (v == '1')
    elseif f == 'lock_reason' then g.lock_reason = v end
  end
  return g
end

-- The lowest and highest price the item had during (now - window_ms, now], including the one
-- in effect at the window start and `current`. The series may be missing (no history yet).
local function window_range(price_key, current, now, window_ms)
  local lo, hi = current, current
  if redis.call('EXISTS', price_key) == 0 then return lo, hi end
  local start = now - window_ms
  local before = redis.call('TS.REVRANGE', price_key, '-', start, 'COUNT', 1)
  if before[1] then
    local p = ts_value(before[1][2])
    if p < lo then lo = p end
    if p > hi then hi = p end
  end
  for _, agg in ipairs({'min', 'max'}) do
    local rows = redis.call('TS.RANGE', price_key, start, now, 'ALIGN', 'start',
      'AGGREGATION', agg, window_ms + 1)
    for _, row in ipairs(rows) do
      local p = ts_value(row[2])
      if p < lo then lo = p end
      if p > hi then hi = p end
    end
  end
  return lo, hi
end

-- Pure guard decision. Returns nil when `new` may become the price, else reason, detail.
-- guard: {floor = num|nil, ceiling = num|nil, locked = bool, lock_reason = str}
-- lo, hi: window_range() of the current price; max_pct: velocity limit in percent.
local function price_verdict(new, source, guard, lo, hi, max_pct, window_ms)
  if guard.locked and source ~= 'manual' then
    local why = 'price is locked by a manual override'
    if guard.lock_reason ~= nil and guard.lock_reason ~= '' then why = why .. ': ' .. guard.lock_reason end
    return 'locked', why
  end
  if guard.floor ~= nil and new < guard.floor * (1 - GUARD_EPS) then
    return 'below_floor', 'price ' .. json_num(new) .. ' is below the floor ' .. json_num(guard.floor)
  end
  if guard.ceiling ~= nil and new > guard.ceiling * (1 + GUARD_EPS) then
    return 'above_ceiling', 'price ' .. json_num(new) .. ' is above the ceiling ' .. json_num(guard.ceiling)
  end
  if source ~= 'manual' and lo ~= nil then
    local low = hi * (1 - max_pct / 100)
    local high = lo * (1 + max_pct / 100)
    if new < low * (1 - GUARD_EPS) or new > high * (1 + GUARD_EPS) then
      return 'velocity', string.format(
        'price %s moves more than %s%% from the prices of the last %d s (%s .. %s): allowed %s .. %s',
        json_num(new), json_num(max_pct), math.floor(window_ms / 1000), json_num(lo), json_num(hi),
        json_num(low), json_num(high))
    end
  end
  return nil
end

-- Current price, stock and content hash of a product document (nil when it does not exist).
local function doc_state(doc_key)
  local raw = redis.call('JSON.GET', doc_key, '$.price', '$.stock', '$.content_hash')
  if not raw then return nil end
  local d = cjson.decode(raw)
  local function first(path)
    local v = d[path]
    if type(v) == 'table' then return v[1] end
    return nil
  end
  return {price = tonumber(first('$.price')), stock = tonumber(first('$.stock')) or 0,
          hash = first('$.content_hash')}
end

-- History timestamps are strictly increasing: a second change within the same millisecond is
-- recorded 1 ms after the previous point, so no accepted price is ever overwritten (the
-- velocity window needs every one of them).
local function record_price(price_key, now, price, retention_ms)
  local ts = now
  if redis.call('EXISTS', price_key) == 1 then
    local last = redis.call('TS.GET', price_key)
    if last[1] ~= nil and tonumber(last[1]) >= ts then ts = tonumber(last[1]) + 1 end
  end
  redis.call('TS.ADD', price_key, ts, json_num(price), 'RETENTION', retention_ms,
    'DUPLICATE_POLICY', 'BLOCK')
end

-- A JSON write that reports a bad document as ERR_BADARG (it is the call's first write, so a
-- refused document leaves everything as it was).
local function json_write(cmd, key, value, name)
  local res = redis.pcall(cmd, key, '$', value)
  if type(res) == 'table' and res.err then fail('ERR_BADARG', name .. ' rejected by ' .. cmd .. ': ' .. res.err) end
  return res
end

-- catalog_upsert: create or update one product from a catalog load (idempotent).
--
-- Purpose: the loader's write path. Unchanged content (same content hash) writes nothing;
--   a new product is written whole; a changed product is merged and keeps its live stock
--   unless the feed manages stock; a feed price change goes through the guardrails as
--   source 'feed' (a refused one leaves the price and marks the hash so a re-run retries it).
--
-- KEYS[1] p:{item}        JSON  product document
-- KEYS[2] i:{item}:guard  HASH  guard settings (read only here)
-- KEYS[3] i:{item}:price  TS    price history
-- ARGV[1] content_json       str  JSON object: every document field except content_hash,
--                                 price, stock, in_stock, created_ms, updated_ms (added here)
-- ARGV[2] content_hash       str  lowercase hex digest of the content (app/catalog/index.py)
-- ARGV[3] price              num  feed price, GBP, > 0
-- ARGV[4] stock              int  feed stock level, >= 0
-- ARGV[5] stock_mode         str  'set' (the feed manages stock: applied on every change) |
--                                 'initial' (applied when the product is created only)
-- ARGV[6] created_ms         int  creation time to record for a new product (ms)
-- ARGV[7] max_change_pct     num  velocity limit, percent
-- ARGV[8] window_ms          int  velocity window
-- ARGV[9] price_retention_ms int  retention of the price history series
-- Reply: {status, price_status}: status 'created' | 'updated' | 'unchanged';
--   price_status '' (no price change) | 'ok' | 'refused:<reason>' (locked, below_floor,
--   above_ceiling, velocity).
-- Errors: ERR_BADARG (bad argument or document; nothing written).
-- Writes: doc (JSON.SET on create, one JSON.MERGE on update; no TTL: products live until
--   deleted), price (TS.ADD of the created or accepted price; RETENTION price_retention_ms,
--   no key TTL). The guard is only read.
local function catalog_upsert(keys, argv)
  local doc_key, guard_key, price_key = keys[1], keys[2], keys[3]
  if #keys ~= 3 then fail('ERR_KEYS', 'expected 3 keys (doc, guard, price), got ' .. #keys) end
  local content = nonempty(argv[1], 'content_json')
  local hash = nonempty(argv[2], 'content_hash')
  local price = price_arg(argv[3], 'price')
  local stock = stock_arg(argv[4], 'stock')
  local stock_mode = argv[5]
  local created_ms = int(argv[6], 'created_ms')
  local max_pct = num(argv[7], 'max_change_pct')
  local window_ms = int(argv[8], 'window_ms')
  local retention_ms = int(argv[9], 'price_retention_ms')
  if string.sub(content, 1, 1) ~= '{' or string.sub(content, -1) ~= '}' then
    fail('ERR_BADARG', 'content_json must be a JSON object')
  end
  if not string.match(hash, '^[0-9a-f]+$') then fail('ERR_BADARG', 'content_hash must be lowercase hex') end
  if stock_mode ~= 'set' and stock_mode ~= 'initial' then
    fail('ERR_BADARG', "stock_mode must be 'set' or 'initial', got " .. tostring(stock_mode))
  end

  local now = now_ms()
  local cur = doc_state(doc_key)
  if cur == nil then
    local doc = splice(content, {
      {'content_hash', '"' .. hash .. '"'}, {'price', json_num(price)}, {'stock', json_num(stock)},
      {'in_stock', stock > 0 and 'true' or 'false'}, {'created_ms', json_num(created_ms)},
      {'updated_ms', json_num(now)},
    })
    json_write('JSON.SET', doc_key, doc, 'content_json')
    record_price(price_key, now, price, retention_ms)
    return {'created', ''}
  end
  if cur.hash == hash then return {'unchanged', ''} end

  local members = {{'updated_ms', json_num(now)}}
  if stock_mode == 'set' then
    members[#members + 1] = {'stock', json_num(stock)}
    members[#members + 1] = {'in_stock', stock > 0 and 'true' or 'false'}
  end
  local price_status, stored_hash, accepted = '', hash, false
  if cur.price == nil or math.abs(cur.price - price) > 1e-9 * price then
    local reason
    if cur.price ~= nil then
      local lo, hi = window_range(price_key, cur.price, now, window_ms)
      reason = price_verdict(price, 'feed', guard_read(guard_key), lo, hi, max_pct, window_ms)
    end
    if reason == nil then
      members[#members + 1] = {'price', json_num(price)}
      price_status, accepted = 'ok', true
    else
      -- Keep the live price; a different stored hash makes the next load try again.
      price_status, stored_hash = 'refused:' .. reason, hash .. 'f'
    end
  end
  members[#members + 1] = {'content_hash', '"' .. stored_hash .. '"'}
  json_write('JSON.MERGE', doc_key, splice(content, members), 'content_json')
  if accepted then record_price(price_key, now, price, retention_ms) end
  return {'updated', price_status}
end

-- The validated ARGV of catalog_update (see its contract), or an error before any write.
local function update_args(argv)
  local a = {source = argv[1], floor = argv[5], ceiling = argv[6], lock = argv[7],
             lock_reason = argv[8] or ''}
  if not PRICE_SOURCES[a.source] then
    fail('ERR_BADARG', "source must be 'manual', 'automation' or 'feed', got " .. tostring(a.source))
  end
  if argv[2] ~= '' then a.price = price_arg(argv[2], 'price') end
  if argv[3] ~= '' then a.stock = stock_arg(argv[3], 'stock') end
  if argv[4] ~= '' then a.delta = int(argv[4], 'stock_delta') end
  if a.stock ~= nil and a.delta ~= nil then fail('ERR_BADARG', 'give stock or stock_delta, not both') end
  a.max_pct = num(argv[9], 'max_change_pct')
  a.window_ms = int(argv[10], 'window_ms')
  a.retention_ms = int(argv[11], 'price_retention_ms')
  a.settings = a.floor ~= '' or a.ceiling ~= '' or a.lock ~= ''
  if a.settings and a.source ~= 'manual' then
    fail('ERR_BADARG', 'floor, ceiling and lock can only be changed by source manual')
  end
  if a.lock ~= '' and a.lock ~= '0' and a.lock ~= '1' then
    fail('ERR_BADARG', "lock must be '1', '0' or '', got " .. tostring(a.lock))
  end
  return a
end

-- The guard after the call's settings: {floor, ceiling, locked, lock_reason, floor_set,
-- ceiling_set}; an error (nothing written) when the floor would sit above the ceiling.
local function guard_change(guard, a)
  local function bound(arg, name)
    if arg == '' then return guard[name], false end
    if arg == '-' then return nil, true end
    return price_arg(arg, name), true
  end
  local g = {locked = guard.locked, lock_reason = guard.lock_reason}
  g.floor, g.floor_set = bound(a.floor, 'floor')
  g.ceiling, g.ceiling_set = bound(a.ceiling, 'ceiling')
  if g.floor ~= nil and g.ceiling ~= nil and g.floor > g.ceiling then
    fail('ERR_BADARG', 'floor ' .. json_num(g.floor) .. ' is above ceiling ' .. json_num(g.ceiling))
  end
  if a.lock ~= '' then
    g.locked = (a.lock == '1')
    g.lock_reason = g.locked and a.lock_reason or ''
  end
  return g
end

-- An accepted update: the guard settings, then one JSON.MERGE (one re-index of the document),
-- then the price history.
local function write_update(doc_key, guard_key, price_key, a, g, cur, stock, price_changes, now)
  if a.settings then
    if g.floor_set then
      if g.floor == nil then redis.call('HDEL', guard_key, 'floor') else redis.call('HSET', guard_key, 'floor', json_num(g.floor)) end
    end
    if g.ceiling_set then
      if g.ceiling == nil then redis.call('HDEL', guard_key, 'ceiling') else redis.call('HSET', guard_key, 'ceiling', json_num(g.ceiling)) end
    end
    if a.lock ~= '' then
      redis.call('HSET', guard_key, 'locked', a.lock, 'lock_reason', g.lock_reason)
    end
    redis.call('HSET', guard_key, 'updated_ms', now)
  end
  local members = {}
  if price_changes then members[#members + 1] = {'price', json_num(a.price)} end
  if stock ~= cur.stock then
    members[#members + 1] = {'stock', json_num(stock)}
    members[#members + 1] = {'in_stock', stock > 0 and 'true' or 'false'}
  end
  if #members > 0 then
    members[#members + 1] = {'updated_ms', json_num(now)}
    redis.call('JSON.MERGE', doc_key, '$', splice('{}', members))
  end
  if price_changes then record_price(price_key, now, a.price, a.retention_ms) end
end

-- catalog_update: change an item's price and/or stock, and its guard settings, atomically.
--
-- Purpose: the live path (HTTP PATCH /v1/items/{id}, repricing automation, stock systems).
--   Either the whole change applies or nothing does; a refused change returns its reason.
--   Stock 0 sets in_stock false in the same write, so the item leaves in-stock search results
--   (and anything filtering on in_stock) at once.
--
-- KEYS[1] p:{item}        JSON  product document (must exist)
-- KEYS[2] i:{item}:guard  HASH  guard settings
-- KEYS[3] i:{item}:price  TS    price history
-- ARGV[1]  source             str  'manual' | 'automation' | 'feed'
-- ARGV[2]  price              num  new price GBP (> 0), '' = unchanged
-- ARGV[3]  stock              int  new stock level (>= 0), '' = unchanged
-- ARGV[4]  stock_delta        int  add to the stock (e.g. -2 on a sale), '' = none; not with ARGV[3]
-- ARGV[5]  floor              num  new floor, '' = unchanged, '-' = remove   (manual only)
-- ARGV[6]  ceiling            num  new ceiling, '' = unchanged, '-' = remove (manual only)
-- ARGV[7]  lock               str  '1' lock, '0' unlock, '' = unchanged      (manual only)
-- ARGV[8]  lock_reason        str  why (kept with the lock; '' = none)
-- ARGV[9]  max_change_pct     num  velocity limit, percent
-- ARGV[10] window_ms          int  velocity window
-- ARGV[11] price_retention_ms int  retention of the price history series
-- Reply: {status, reason, detail, price, stock, floor, ceiling, locked}
--   status 'ok' | 'refused' | 'not_found'; reason '' | 'locked' | 'below_floor' |
--   'above_ceiling' | 'velocity' | 'insufficient_stock'; detail: human-readable; price,
--   floor, ceiling as strings ('' = none), stock and locked (0/1) as integers: the state
--   after the call.
-- Errors: ERR_BADARG (bad argument, floor > ceiling, guard settings from a non-manual source),
--   ERR_KEYS. Nothing is written on an error, a refusal or not_found.
-- Writes: guard (HSET/HDEL when settings change; no TTL), doc (one JSON.MERGE of price, stock,
--   in_stock, updated_ms), price (TS.ADD of an accepted price change; RETENTION
--   price_retention_ms, no key TTL).
local function catalog_update(keys, argv)
  local doc_key, guard_key, price_key = keys[1], keys[2], keys[3]
  if #keys ~= 3 then fail('ERR_KEYS', 'expected 3 keys (doc, guard, price), got ' .. #keys) end
  local a = update_args(argv)
  local guard = guard_read(guard_key)
  local new_guard = guard_change(guard, a)

  local function reply(status, reason, detail, price, stock, g)
    local f, c = '', ''
    if g.floor ~= nil then f = json_num(g.floor) end
    if g.ceiling ~= nil then c = json_num(g.ceiling) end
    local p = ''
    if price ~= nil then p = json_num(price) end
    return {status, reason, detail, p, stock or 0, f, c, g.locked and 1 or 0}
  end

  local cur = doc_state(doc_key)
  if cur == nil then return reply('not_found', '', 'no product document', nil, 0, guard) end

  local now = now_ms()
  local new_price = a.price
  local price_changes = new_price ~= nil and (cur.price == nil or math.abs(new_price - cur.price) > 1e-9 * new_price)
  if price_changes then
    local lo, hi = nil, nil
    if cur.price ~= nil then lo, hi = window_range(price_key, cur.price, now, a.window_ms) end
    local reason, detail = price_verdict(new_price, a.source, new_guard, lo, hi, a.max_pct, a.window_ms)
    if reason ~= nil then return reply('refused', reason, detail, cur.price, cur.stock, guard) end
  end
  local stock = cur.stock
  if a.stock ~= nil then stock = a.stock end
  if a.delta ~= nil then
    if cur.stock + a.delta < 0 then
      return reply('refused', 'insufficient_stock',
        'stock ' .. json_num(cur.stock) .. ' cannot change by ' .. json_num(a.delta), cur.price, cur.stock, guard)
    end
    stock = cur.stock + a.delta
    if stock > STOCK_MAX then fail('ERR_BADARG', 'stock would exceed ' .. STOCK_MAX) end
  end

  write_update(doc_key, guard_key, price_key, a, new_guard, cur, stock, price_changes, now)
  return reply('ok', '', '', price_changes and new_price or cur.price, stock, new_guard)
end

-- catalog_item (no-writes): one product with its guard settings and recent price history.
--
-- KEYS[1] p:{item} JSON, KEYS[2] i:{item}:guard HASH, KEYS[3] i:{item}:price TS
-- ARGV[1] history_n int  newest price points returned (0 = none)
-- Reply: {doc_json|'', floor|'', ceiling|'', locked 0|1, lock_reason, ts1, price1, ts2, ...}
--   doc_json is the whole document (the client drops the vectors); price points newest
--   first, prices as strings. Errors: ERR_BADARG, ERR_KEYS. Writes nothing.
local function catalog_item(keys, argv)
  local doc_key, guard_key, price_key = keys[1], keys[2], keys[3]
  if #keys ~= 3 then fail('ERR_KEYS', 'expected 3 keys (doc, guard, price), got ' .. #keys) end
  local history_n = int(argv[1], 'history_n')
  local doc = redis.call('JSON.GET', doc_key, '$')
  if doc then doc = string.sub(doc, 2, -2) else doc = '' end
  local g = guard_read(guard_key)
  local reply = {doc, g.floor and json_num(g.floor) or '', g.ceiling and json_num(g.ceiling) or '',
                 g.locked and 1 or 0, g.lock_reason or ''}
  if history_n > 0 and redis.call('EXISTS', price_key) == 1 then
    for _, row in ipairs(redis.call('TS.REVRANGE', price_key, '-', '+', 'COUNT', history_n)) do
      reply[#reply + 1] = row[1]
      reply[#reply + 1] = json_num(ts_value(row[2]))
    end
  end
  return reply
end

redis.register_function{function_name = 'catalog_upsert', callback = catalog_upsert}
redis.register_function{function_name = 'catalog_update', callback = catalog_update}
redis.register_function{function_name = 'catalog_item', callback = catalog_item, flags = {'no-writes'}}
