-- Shared helpers for every Function in the `retail` library.
-- This file is concatenated first by app/redis/library.py (which prepends the `#!lua` shebang and
-- `local LIBRARY_VERSION = '...'`). Keep it free of side effects: no redis.call at load time.

-- Error codes are mirrored once in app/core/errors.py (LUA_ERROR_CODES).
local function fail(code, msg)
  return error({err = code .. ' ' .. msg}, 0)
end

local function num(value, name)
  local n = tonumber(value)
  if n == nil or n ~= n then
    fail('ERR_BADARG', name .. ' must be a number, got ' .. tostring(value))
  end
  return n
end

local function int(value, name)
  local n = num(value, name)
  if n ~= math.floor(n) then
    fail('ERR_BADARG', name .. ' must be an integer, got ' .. tostring(value))
  end
  return n
end

local function nonempty(value, name)
  if value == nil or value == '' then
    fail('ERR_BADARG', name .. ' must not be empty')
  end
  return value
end

-- KEYS index given in ARGV (1-based); 0 means "no key in this call" (used when a cluster
-- client splits one event across per-slot calls).
local function key_at(keys, idx, name)
  local i = int(idx, name)
  if i == 0 then return nil end
  local key = keys[i]
  if key == nil then
    fail('ERR_KEYS', name .. ' refers to KEYS[' .. i .. '] but only ' .. #keys .. ' keys were passed')
  end
  return key
end

-- cjson turns empty tables into {}: restore the arrays the session document declares.
local ARRAY_FIELDS = {'head', 'bhead'}
local function encode_doc(doc)
  local s = cjson.encode(doc)
  for _, name in ipairs(ARRAY_FIELDS) do
    -- Only an empty list needs the fix; a plain find beats a gsub pattern scan of the whole
    -- document (three gsubs cost ~87 us on a 4 KB session, measured by bench/ingest.py).
    local list = doc[name]
    if list ~= nil and next(list) == nil then
      local i, j = string.find(s, '"' .. name .. '":{}', 1, true)
      if i then s = string.sub(s, 1, i - 1) .. '"' .. name .. '":[]' .. string.sub(s, j + 1) end
    end
  end
  return s
end

-- The newest `size` entries of a session map (key -> {ts, ..., seq}) as rows {key, ts, seq},
-- newest first (equal times: higher seq first). See docs/keys.md.
local function newest(entries, size)
  local rows = {}
  for item, e in pairs(entries) do rows[#rows + 1] = {item, e[1], e[#e]} end
  table.sort(rows, function(a, b)
    if a[2] == b[2] then return a[3] > b[3] end
    return a[2] > b[2]
  end)
  while #rows > size do table.remove(rows) end
  return rows
end

-- Wall clock of the server in ms (Functions may call TIME: effects are replicated, not scripts).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local EVENT_TYPES = {
  view = true, click = true, add_to_cart = true, remove_from_cart = true,
  purchase = true, search = true,
}

-- Price bands used as an affinity attribute ("price:5-10"); GBP, lower bound inclusive.
local function price_band(price)
  if price == nil or price <= 0 then return nil end
  if price < 2 then return 'lt2' end
  if price < 5 then return '2-5' end
  if price < 10 then return '5-10' end
  if price < 25 then return '10-25' end
  return '25+'
end

-- Forward decay (Cormode et al. 2009): an event of weight w at time t adds
-- w * 2^((t - epoch) / half_life) to a member's score. Ordering by stored score equals ordering
-- by decayed value at any later time, so ZINCRBY stays O(log n) and ZREVRANGE stays correct.
-- The value "as of" time `at` is score * 2^(-(at - epoch) / half_life), computed in log space
-- so huge stored scores never overflow on the way.
local function forward_weight(w, t, epoch, half_life)
  return w * 2 ^ ((t - epoch) / half_life)
end

local function decayed_value(score, at, epoch, half_life)
  if score <= 0 then return 0 end
  return math.exp(math.log(score) - (at - epoch) / half_life * math.log(2))
end

-- The seen-filter (Bloom, per user): `capacity` items at `error` in a first sub-filter, then
-- scaling (EXPANSION 2) up to SEEN_MAX_FACTOR x capacity items (4 sub-filters: 1+2+4+8).
-- A fixed-size (NONSCALING) filter silently refused every item past its capacity, so heavy
-- buyers (1,000+ distinct items in the sample) were offered what they had already bought.
-- Past the cap nothing more is recorded (memory bound: ~22 KB at 1,000 x 1 %).
local SEEN_MAX_FACTOR = 15

local function seen_insert(key, capacity, error_rate, items)
  local room = capacity * SEEN_MAX_FACTOR
  if redis.call('EXISTS', key) == 1 then room = room - tonumber(redis.call('BF.CARD', key)) end
  if room <= 0 or #items == 0 then return end
  local batch = items
  if #items > room then batch = {unpack(items, 1, room)} end
  redis.call('BF.INSERT', key, 'CAPACITY', capacity, 'ERROR', error_rate, 'EXPANSION', 2,
    'ITEMS', unpack(batch))
end

-- library_version (no-writes): the version string app/redis/library.py computed when loading.
-- KEYS none, ARGV none. Reply: string.
local function library_version(keys, argv)
  return LIBRARY_VERSION
end

redis.register_function{function_name = 'library_version', callback = library_version,
  flags = {'no-writes', 'allow-stale'}}
