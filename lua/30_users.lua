-- Per-user reads and the identify merge. All keys of one call share the user's hash tag.

-- user_profile (no-writes): a user's live state in one round trip.
--
-- KEYS[1] u:{user}:session  JSON     KEYS[2] u:{user}:aff  ZSET
-- KEYS[3] u:{user}:seen     BF       KEYS[4] u:{user}:profile JSON
-- ARGV[1] aff_epoch_ms int, ARGV[2] aff_half_life_ms int, ARGV[3] top_n int (affinities returned)
-- Reply: {session_json|'', profile_json|'', seen_estimate, aff_member1, value1, ...}
--   values are decayed to the server's current time, as strings; strongest first.
-- Errors: ERR_BADARG. Writes nothing.
local function user_profile(keys, argv)
  local session_key, aff_key, seen_key, profile_key = keys[1], keys[2], keys[3], keys[4]
  local epoch = int(argv[1], 'aff_epoch_ms')
  local half_life = int(argv[2], 'aff_half_life_ms')
  local top_n = int(argv[3], 'top_n')
  local now = now_ms()
  local session = redis.call('JSON.GET', session_key, '$')
  if session then session = string.sub(session, 2, -2) else session = '' end
  local profile = redis.call('JSON.GET', profile_key, '$')
  if profile then profile = string.sub(profile, 2, -2) else profile = '' end
  local seen = 0
  if redis.call('EXISTS', seen_key) == 1 then seen = redis.call('BF.CARD', seen_key) end
  local reply = {session, profile, seen}
  local top = redis.call('ZREVRANGE', aff_key, 0, top_n - 1, 'WITHSCORES')
  for i = 1, #top, 2 do
    reply[#reply + 1] = top[i]
    reply[#reply + 1] = tostring(decayed_value(tonumber(top[i + 1]), now, epoch, half_life))
  end
  return reply
end

-- export_user (no-writes): what identify needs from an anonymous id's slot.
--
-- KEYS[1] u:{anon}:session JSON, KEYS[2] u:{anon}:aff ZSET
-- Reply: {session_json|'', member1, raw_score1, ...} (raw forward-decayed scores: same epoch
--   for every user, so they add up directly in the target's set).
-- Writes nothing.
local function export_user(keys, argv)
  local session_key, aff_key = keys[1], keys[2]
  local session = redis.call('JSON.GET', session_key, '$')
  if session then session = string.sub(session, 2, -2) else session = '' end
  local reply = {session}
  local all = redis.call('ZRANGE', aff_key, 0, -1, 'WITHSCORES')
  for i = 1, #all do reply[#reply + 1] = all[i] end
  return reply
end

local MERGED_CAP = 20
local SESSION_MAPS = {'recent', 'purchased', 'searches'}

-- Merge one session map (key -> [ts, ..., seq]) into another: the newer entry wins; then keep
-- the newest `cap` (ordered by ts, then seq).
local function merge_map(into, from, cap)
  for key, e in pairs(from or {}) do
    local mine = into[key]
    if mine == nil or mine[1] < e[1] then into[key] = e end
  end
  local rows = newest(into, math.huge)
  for i = cap + 1, #rows do into[rows[i][1]] = nil end
  return rows
end

-- Head rows {item, ts, seq} of the newest `size` entries (rows as merge_map sorted them).
local function head_rows(rows, size, map)
  local head = {}
  for _, row in ipairs(rows) do
    if #head >= size then break end
    if map[row[1]] ~= nil then head[#head + 1] = {row[1], row[2]} end
  end
  return head
end

-- identify_user's ARGV, validated before anything is written.
local function identify_args(argv)
  local ok, traits = pcall(cjson.decode, argv[3] or '{}')
  if not ok or type(traits) ~= 'table' then fail('ERR_BADARG', 'traits must be a JSON object') end
  local args = {
    user_id = nonempty(argv[1], 'user_id'),
    anon_id = argv[2] or '',
    traits = traits,
    session_ttl = int(argv[4], 'session_ttl_s'),
    user_ttl = int(argv[5], 'user_ttl_s'),
    profile_ttl = int(argv[6], 'profile_ttl_s'),
    recent_cap = int(argv[7], 'recent_cap'),
    bloom_capacity = int(argv[8], 'bloom_capacity'),
    bloom_error = num(argv[9], 'bloom_error'),
  }
  if argv[10] ~= nil and argv[10] ~= '' then
    local ok2, decoded = pcall(cjson.decode, argv[10])
    if not ok2 or type(decoded) ~= 'table' then fail('ERR_BADARG', 'anonymous session is not JSON') end
    args.anon_session = decoded
  end
  if (#argv - 10) % 2 ~= 0 then fail('ERR_BADARG', 'affinity list must be member/score pairs') end
  for i = 11, #argv, 2 do num(argv[i + 1], 'affinity score') end
  return args
end

local function contains(list, value)
  for _, v in ipairs(list) do
    if v == value then return true end
  end
  return false
end

-- Fold the anonymous session document into the user's (maps merged newest-first and capped,
-- carts and counters summed); returns the merged document.
local function merge_session_docs(doc, anon, recent_cap)
  local head_size = math.max(#(doc.head or {}), #(anon.head or {}), 1)
  for _, name in ipairs(SESSION_MAPS) do
    doc[name] = doc[name] or {}
    local rows = merge_map(doc[name], anon[name], recent_cap)
    if name == 'recent' then doc.head = head_rows(rows, head_size, doc[name]) end
    if name == 'purchased' then doc.bhead = head_rows(rows, head_size, doc[name]) end
  end
  doc.cart = doc.cart or {}
  for item, line in pairs(anon.cart or {}) do
    local mine = doc.cart[item]
    if mine then mine.qty = mine.qty + line.qty else doc.cart[item] = line end
  end
  doc.counters = doc.counters or {}
  for name, n in pairs(anon.counters or {}) do
    doc.counters[name] = (doc.counters[name] or 0) + n
  end
  if (anon.last_ts or 0) > (doc.last_ts or 0) then doc.last_ts = anon.last_ts end
  if doc.m and anon.m then
    -- The session's running means restart: they cannot be combined exactly.
    doc.m.seq = math.max(doc.m.seq or 0, anon.m.seq or 0)
    doc.m.ra, doc.m.pa, doc.m.sa = 0, 0, 0
  end
  return doc
end

-- Write the user's session with the anonymous one merged in and mark the anonymous items
-- seen; returns how many items came over.
local function merge_anon_session(session_key, seen_key, args)
  local anon = args.anon_session
  local cur = redis.call('JSON.GET', session_key, '$')
  local doc = anon
  if cur then doc = merge_session_docs(cjson.decode(cur)[1], anon, args.recent_cap) end
  redis.call('JSON.SET', session_key, '$', encode_doc(doc))
  redis.call('EXPIRE', session_key, args.session_ttl)
  local items = {}
  for _, name in ipairs({'recent', 'purchased', 'cart'}) do
    for item, _ in pairs(anon[name] or {}) do items[#items + 1] = item end
  end
  if #items > 0 then
    seen_insert(seen_key, args.bloom_capacity, args.bloom_error, items)
    redis.call('EXPIRE', seen_key, args.user_ttl)
  end
  return #items
end

-- cjson writes an empty table as {}: the profile's `merged` is a list, its `traits` an object.
local function encode_profile(profile)
  local encoded = cjson.encode(profile)
  encoded = string.gsub(encoded, '"merged":{}', '"merged":[]')
  encoded = string.gsub(encoded, '"traits":%[%]', '"traits":{}')
  return encoded
end

-- identify_user: attach traits to a known user and merge an anonymous id's state into it.
--
-- KEYS (all u:{user}:*): [1] session JSON, [2] aff ZSET, [3] seen BF, [4] profile JSON
-- ARGV:
--   [1] user_id str, [2] anonymous_id str ('' = traits only), [3] traits JSON object ('{}' = none)
--   [4] session_ttl_s int, [5] user_ttl_s int, [6] profile_ttl_s int, [7] recent_cap int,
--   [8] bloom_capacity int, [9] bloom_error num,
--   [10] anon session JSON ('' = none), then aff pairs: member, raw_score, ...
-- Reply: {status, merged_items}: status 'merged' | 'already_merged' | 'traits_only'
-- Errors: ERR_BADARG (traits not an object, odd aff list). Nothing written on error.
-- Writes: profile (JSON.SET/JSON.MERGE traits, merged ids capped at 20, EXPIRE profile_ttl_s),
--   session (JSON.SET, EXPIRE session_ttl_s), aff (ZINCRBY, EXPIRE user_ttl_s),
--   seen (BF.INSERT, EXPIRE user_ttl_s).
-- The caller deletes the anonymous keys afterwards (same slot as the anonymous id); a retry
-- after a crash finds the anonymous id in profile.merged and does not add it twice.
local function identify_user(keys, argv)
  local session_key, aff_key, seen_key, profile_key = keys[1], keys[2], keys[3], keys[4]
  local args = identify_args(argv)

  local now = now_ms()
  local raw = redis.call('JSON.GET', profile_key, '$')
  local profile
  if raw then
    profile = cjson.decode(raw)[1]
  else
    profile = {user_id = args.user_id, traits = {}, created_ts = now, merged = {}}
  end
  for name, value in pairs(args.traits) do profile.traits[name] = value end
  profile.updated_ts = now

  local status = 'traits_only'
  local merged_items = 0
  if args.anon_id ~= '' then
    if contains(profile.merged or {}, args.anon_id) then
      status = 'already_merged'
    else
      status = 'merged'
      profile.merged = profile.merged or {}
      table.insert(profile.merged, 1, args.anon_id)
      while #profile.merged > MERGED_CAP do table.remove(profile.merged) end
      if args.anon_session ~= nil then
        merged_items = merge_anon_session(session_key, seen_key, args)
      end
      for i = 11, #argv, 2 do
        redis.call('ZINCRBY', aff_key, argv[i + 1], argv[i])
      end
      if #argv > 10 then redis.call('EXPIRE', aff_key, args.user_ttl) end
    end
  end
  redis.call('JSON.SET', profile_key, '$', encode_profile(profile))
  redis.call('EXPIRE', profile_key, args.profile_ttl)
  return {status, merged_items}
end

redis.register_function{function_name = 'user_profile', callback = user_profile, flags = {'no-writes'}}
redis.register_function{function_name = 'export_user', callback = export_user, flags = {'no-writes'}}
redis.register_function{function_name = 'identify_user', callback = identify_user}
