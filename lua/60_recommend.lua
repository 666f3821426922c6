-- Recommendations: the user-slot half of serving (docs/recommendations.md).
--
-- A Function touches one cluster slot. The user's keys share the hash tag {user}; neighbour
-- lists (i:{item}:nn|cn|co:*) and product documents (p:{item}) live in item slots. So the
-- Python layer (app/recs/recommender.py) gathers the item-slot data (the neighbour lists of the
-- session's anchor items, global lists, product attributes from its catalog cache) and passes
-- candidates WITH their attributes in ARGV; `recommend` runs in the user's slot, reads the
-- session, history, affinities, seen-filter and traits, and does the scoring, filtering,
-- diversity and reasons. `rec_context` tells the Python layer which anchors to gather.
--
-- All helpers live in one table (REC) to keep the library's top-level locals few.

local REC = {}

REC.SOURCES = {nn = true, co = true, ct = true, cat = true, tr = true, pop = true, rb = true,
               uk = true, new = true, rise = true}
REC.TIERS = {'cold', 'content', 'collab'}
REC.SURFACES = {home = true, product = true, cart = true}
REC.PERSONAL = {nn = true, co = true, ct = true, rb = true}  -- sources tied to an anchor

-- Default weights (app/recs/recommender.py sends the variant's full spec; these fill any gap).
--   sources:  nn model neighbours, co real-time co-occurrence, ct content (vector) neighbours,
--             cat top items of the user's categories, tr trending now, pop global popularity,
--             rb buy-again (history items themselves; only with repurchase on),
--             uk similar shoppers' recent items (user-kNN: the model's peers x their history),
--             new new arrivals (catalog created_ms within a window, decayed by age),
--             rise items selling above their usual rate lately (recent popularity in excess
--             of the long-run share)
--   anchors:  view/click/add_to_cart/purchase (a session item by its last event type, decayed
--             by recency), cart (a cart line), context (the product page's item), hist
--             (long-term history, relative to the user's strongest item, at least hist_floor)
--   features: aff (category affinity), price (price-band affinity), prior (popularity)
--   tiers:    '<tier>.<source>' multiplies a source's weight in that tier
REC.DEFAULT_WEIGHTS = {
  nn = 1.4, co = 0.2, ct = 0.2, cat = 0.15, tr = 0.1, pop = 0.5, rb = 1.0,
  view = 1.0, click = 1.2, add_to_cart = 1.5, purchase = 1.0, cart = 1.5, context = 2.0,
  hist = 1.0, hist_floor = 0.3,
  aff = 1.0, price = 0.05, prior = 0.05,
  ['cold.nn'] = 1, ['cold.co'] = 1, ['cold.ct'] = 1, ['cold.cat'] = 1, ['cold.tr'] = 1.5,
  ['cold.pop'] = 1.5, ['cold.rb'] = 1,
  ['content.nn'] = 0.5, ['content.co'] = 0.5, ['content.ct'] = 1.5, ['content.cat'] = 1,
  ['content.tr'] = 1, ['content.pop'] = 1, ['content.rb'] = 1,
  ['collab.nn'] = 1, ['collab.co'] = 1, ['collab.ct'] = 0.5, ['collab.cat'] = 1,
  ['collab.tr'] = 0.5, ['collab.pop'] = 0.5, ['collab.rb'] = 1,
  uk = 5.0, ['cold.uk'] = 1, ['content.uk'] = 1, ['collab.uk'] = 1,
  new = 3.0, ['cold.new'] = 0, ['content.new'] = 0, ['collab.new'] = 1,
  rise = 1.0, ['cold.rise'] = 0, ['content.rise'] = 0, ['collab.rise'] = 1,
}

-- Reason of an anchor by the session event that made it an anchor.
REC.RECENT_REASON = {view = 'viewed', click = 'viewed', add_to_cart = 'carted', purchase = 'bought'}
-- Anchor roles that are live intent of this session (the live_share slots): not 'bought' (a
-- purchase ends an intent) and not 'history'.
REC.LIVE_REASONS = {context = true, in_cart = true, viewed = true, carted = true}

-- "name=value,name=value" over the defaults; an unknown name is an error (a typo in a variant
-- must not pass silently).
function REC.weights(spec)
  local w = {}
  for name, value in pairs(REC.DEFAULT_WEIGHTS) do w[name] = value end
  for part in string.gmatch(spec or '', '[^,]+') do
    local name, value = string.match(part, '^%s*([%w_%.]+)%s*=%s*(%S+)%s*$')
    if name == nil then fail('ERR_BADARG', 'weights: bad entry ' .. part) end
    if REC.DEFAULT_WEIGHTS[name] == nil then fail('ERR_BADARG', 'weights: unknown name ' .. name) end
    w[name] = num(value, 'weights.' .. name)
  end
  return w
end

-- "a,b,c" -> {a = true, ...}
function REC.set(spec)
  local s = {}
  for part in string.gmatch(spec or '', '[^,]+') do s[part] = true end
  return s
end

-- "flag=trait,flag2=trait2" -> {flag = trait}
function REC.guards(spec)
  local g = {}
  for part in string.gmatch(spec or '', '[^,]+') do
    local flag, trait = string.match(part, '^([%w_%-]+)=([%w_%.%-]+)$')
    if flag == nil then fail('ERR_BADARG', 'guards: bad entry ' .. part) end
    g[flag] = trait
  end
  return g
end

function REC.truthy(v)
  return v == true or v == 1 or v == '1' or v == 'true' or v == 'yes'
end

function REC.tier(interactions, content_min, collab_min)
  if interactions >= collab_min then return 'collab' end
  if interactions >= content_min then return 'content' end
  return 'cold'
end

-- The first match of a multi-path JSON.GET reply ({"$.a": [v], ...}); nil when absent.
function REC.first(obj, path)
  local m = obj[path]
  if type(m) ~= 'table' then return nil end
  return m[1]
end

-- Session fields both Functions need: last_ts, recent, cart lines (newest first).
-- recent is stored as item -> [ts, type, seq] (see docs/keys.md) and holds up to 2 x cap - 1
-- entries between trims; `ordered` sorts it newest first by (ts, seq). `recommend` uses recent
-- as a set and a lookup only, so it skips the sort (measured: the sort was the Function's
-- p99 regression after the session became item maps).
function REC.read_session(session_key, ordered)
  local raw = redis.call('JSON.GET', session_key, '$.last_ts', '$.recent', '$.cart')
  local out = {last_ts = 0, recent = {}, cart = {}}
  if not raw then return out end
  local obj = cjson.decode(raw)
  out.last_ts = tonumber(REC.first(obj, '$.last_ts')) or 0
  local recent = REC.first(obj, '$.recent')
  if type(recent) == 'table' then
    for item, e in pairs(recent) do
      if type(item) == 'string' and type(e) == 'table' and e[3] ~= nil then
        out.recent[#out.recent + 1] = {item = item, ts = tonumber(e[1]) or 0, type = e[2], seq = e[3]}
      end
    end
    if ordered then
      table.sort(out.recent, function(a, b)
        if a.ts == b.ts then return a.seq > b.seq end
        return a.ts > b.ts
      end)
    end
  end
  local cart = REC.first(obj, '$.cart')
  if type(cart) == 'table' then
    for item, line in pairs(cart) do
      if type(line) == 'table' then out.cart[#out.cart + 1] = {item = item, ts = tonumber(line.ts) or 0} end
    end
    table.sort(out.cart, function(a, b)
      if a.ts == b.ts then return a.item < b.item end
      return a.ts > b.ts
    end)
  end
  return out
end

function REC.interactions(seen_key)
  if redis.call('EXISTS', seen_key) == 1 then return tonumber(redis.call('BF.CARD', seen_key)) end
  return 0
end

-- Affinities normalised per kind: ({category = 0..1}, {band = 0..1}, [categories strongest first]).
function REC.affinities(aff_key)
  local flat = redis.call('ZREVRANGE', aff_key, 0, -1, 'WITHSCORES')
  local cats, bands, order = {}, {}, {}
  local cmax, bmax = 0, 0
  for i = 1, #flat, 2 do
    local member, score = flat[i], tonumber(flat[i + 1])
    if score > 0 then
      if string.sub(member, 1, 4) == 'cat:' then
        local c = string.sub(member, 5)
        cats[c] = score; order[#order + 1] = c
        if score > cmax then cmax = score end
      elseif string.sub(member, 1, 6) == 'price:' then
        local b = string.sub(member, 7)
        bands[b] = score
        if score > bmax then bmax = score end
      end
    end
  end
  for c, s in pairs(cats) do cats[c] = s / cmax end
  for b, s in pairs(bands) do bands[b] = s / bmax end
  return cats, bands, order
end

-- Weight and reason of each anchor: the strongest of its roles (pure: tested in lupa); and
-- the reason of its strongest live role (context, cart line, a view/click/add in the session;
-- nil = none), which decides the live_share slots even when a long-term role weighs more.
--   anchors: {item...}; ctx: {context = item|'', recent = {...}, cart = {...}, hist = {item = 0..1}}
function REC.anchor_weights(anchors, ctx, w, now, half_life)
  local recent, cart = {}, {}
  for _, e in ipairs(ctx.recent) do
    if recent[e.item] == nil then recent[e.item] = e end
  end
  for _, line in ipairs(ctx.cart) do cart[line.item] = true end
  local weights, reasons, live = {}, {}, {}
  for i, a in ipairs(anchors) do
    local best, why = 0, 'history'
    if a == ctx.context then best, why = w.context, 'context' end
    if cart[a] and w.cart > best then best, why = w.cart, 'in_cart' end
    local e = recent[a]
    if e then
      local age = math.max(0, now - (tonumber(e.ts) or now))
      local rw = (w[e.type] or w.view) * 2 ^ (-age / half_life)
      if rw > best then best, why = rw, REC.RECENT_REASON[e.type] or 'viewed' end
    end
    if best > 0 and REC.LIVE_REASONS[why] then live[i] = why end
    local h = ctx.hist[a] or 0
    if h > 0 then h = math.max(h, w.hist_floor) * w.hist end
    if h > best then best, why = h, 'history' end
    weights[i], reasons[i] = best, why
  end
  return weights, reasons, live
end

-- Source codes of the candidate block: 'anchor * 10 + source' in one number, so a source costs
-- two arguments (code, value). Sources: 1 nn, 2 co, 3 ct, 4 cat, 5 tr, 6 pop, 7 rb, 8 uk,
-- 9 new, 0 rise.
REC.SOURCE_CODES = {[0] = 'rise', 'nn', 'co', 'ct', 'cat', 'tr', 'pop', 'rb', 'uk', 'new'}

-- Parse the candidate block of ARGV (starting at `pos`) into flat arrays: no table per
-- candidate or per source (Lua spends ~60-80 ns per argument; tables would double that).
-- Validates every field.
--   C: item, category, price, stock (bool), pop, flags (string), s0 (sources before it), ns
--   S: src, anchor, value (all sources of all candidates, in order)
function REC.parse_candidates(argv, pos, n, n_anchors)
  local items, cats, prices, stock, pops, flags, s0, nsrc = {}, {}, {}, {}, {}, {}, {}, {}
  local srcs, anchors, values = {}, {}, {}
  local codes, m = REC.SOURCE_CODES, 0
  for i = 1, n do
    local item = argv[pos]
    local price, pop, ns = tonumber(argv[pos + 2]), tonumber(argv[pos + 4]), tonumber(argv[pos + 6])
    if item == nil or item == '' or price == nil or price ~= price or pop == nil or pop ~= pop
        or ns == nil or ns < 0 then
      fail('ERR_BADARG', 'candidate ' .. i .. ': item must not be empty; price, popularity and ' ..
        'n_sources must be numbers')
    end
    items[i], cats[i], prices[i], pops[i], s0[i], nsrc[i] = item, argv[pos + 1] or '', price, pop, m, ns
    stock[i], flags[i] = argv[pos + 3] == '1', argv[pos + 5] or ''
    pos = pos + 7
    for _ = 1, ns do
      local code, v = tonumber(argv[pos]), tonumber(argv[pos + 1])
      if code == nil or v == nil or v ~= v then
        fail('ERR_BADARG', 'candidate ' .. item .. ': source code and value must be numbers')
      end
      local si = code % 10
      local a = (code - si) / 10
      local src = codes[si]
      if src == nil or a > n_anchors or a < 0 or a % 1 ~= 0 then
        fail('ERR_BADARG', 'candidate ' .. item .. ': bad source code ' .. argv[pos])
      end
      m = m + 1
      srcs[m], anchors[m], values[m] = src, a, v
      pos = pos + 2
    end
  end
  local C = {item = items, category = cats, price = prices, stock = stock, pop = pops,
             flags = flags, s0 = s0, ns = nsrc}
  return C, {src = srcs, anchor = anchors, value = values}, pos
end

-- Each source's weight in this tier: w[src] * w['<tier>.<src>'].
function REC.tier_weights(w, tier)
  local m = {}
  for src, _ in pairs(REC.SOURCES) do m[src] = (w[src] or 0) * (w[tier .. '.' .. src] or 1) end
  return m
end

-- Score candidate i (pure): sum over its sources of tier weight x anchor weight x value, plus
-- the features. Returns score, best source, best anchor index (0 = global or none).
function REC.score(C, S, i, m, w, aw, cat_aff, band_aff, live)
  local rel, best, best_src, best_anchor = 0, 0, 'pop', 0
  local live_best, live_src, live_anchor = 0, nil, 0
  local category = C.category[i]
  local s0 = C.s0[i]
  for j = s0 + 1, s0 + C.ns[i] do
    local src, a = S.src[j], S.anchor[j]
    local a_w = 1
    if src == 'cat' then a_w = cat_aff[category] or 0
    elseif a > 0 then a_w = aw[a] or 0 end
    local term = m[src] * a_w * S.value[j]
    rel = rel + term
    if term > best then best, best_src, best_anchor = term, src, a end
    if live and a > 0 and live[a] and term > live_best then
      live_best, live_src, live_anchor = term, src, a
    end
  end
  local feat = w.aff * (cat_aff[category] or 0) + w.prior * C.pop[i]
  local band = price_band(C.price[i])
  if band ~= nil then feat = feat + w.price * (band_aff[band] or 0) end
  return rel + feat, best_src, best_anchor, live_src, live_anchor
end

-- Greedy top-k by score with at most `per_cat` items per category (0 = no cap) and two
-- blends of reasons:
--   share:      among the first i items at most ceil(share * i) are personal (tied to one of
--               the shopper's items: c.personal); the other slots go to the best global ones
--               (trending, popular, category tops). share >= 1 turns it off.
--   live_share: among the first i items at least ceil(live_share * i) are tied to live intent
--               of this session (c.live: a view, click, cart line or the product page's item)
--               while such candidates remain. Long-term signals (similar shoppers, history) can
--               outscore a click from two seconds ago; these slots keep the list reactive.
--               0 turns it off. An item placed by this rule gets its live reason (c.by_live).
-- Both rules are prefix-consistent: the first 10 of a k=20 list are the k=10 list. Pure.
-- Returns the chosen items and how many better-scored items the category cap passed over.
function REC.diversify(scored, k, per_cat, share, live_share)
  live_share = live_share or 0
  table.sort(scored, function(a, b)
    if a.score == b.score then return a.item < b.item end
    return a.score > b.score
  end)
  local personal, global, live = {}, {}, {}
  for _, c in ipairs(scored) do
    if c.personal then personal[#personal + 1] = c else global[#global + 1] = c end
    if c.live then live[#live + 1] = c end
  end
  local out, used, taken, skipped, n_personal, n_live = {}, {}, {}, 0, 0, 0
  local ip, ig, il = 1, 1, 1
  -- The next candidate of `list` from `i` not taken and within its category cap (a capped
  -- category stays capped). The live list is a subset of the others: it does not count skips.
  local function next_ok(list, i, count)
    while list[i] ~= nil do
      local c = list[i]
      if not taken[c.item] then
        local n = used[c.category] or 0
        if per_cat <= 0 or n < per_cat then return i end
        if count then skipped = skipped + 1 end
      end
      i = i + 1
    end
    return i
  end
  while #out < k do
    ip, ig = next_ok(personal, ip, true), next_ok(global, ig, true)
    local p, g, c = personal[ip], global[ig], nil
    if live_share > 0 and n_live < math.ceil(live_share * (#out + 1) - 1e-9) then
      il = next_ok(live, il, false)
      c = live[il]
      if c ~= nil then c.by_live = true end
    end
    if c == nil then
      if p == nil and g == nil then break end
      local take_personal
      if p == nil then take_personal = false
      elseif g == nil then take_personal = true
      elseif share < 1 and n_personal + 1 > math.ceil(share * (#out + 1) - 1e-9) then
        take_personal = false
      else
        take_personal = p.score > g.score or (p.score == g.score and p.item < g.item)
      end
      if take_personal then c = p else c = g end
    end
    taken[c.item] = true
    if c.personal then n_personal = n_personal + 1 end
    if c.live then n_live = n_live + 1 end
    out[#out + 1] = c
    used[c.category] = (used[c.category] or 0) + 1
  end
  return out, skipped
end

-- rec_context (no-writes): what the Python layer needs to gather candidates for a user.
--
-- KEYS[1] u:{user}:session JSON  session document (recent, cart, last_ts)
-- KEYS[2] u:{user}:hist    ZSET  item -> forward-decayed interest (rec_track)
-- KEYS[3] u:{user}:aff     ZSET  'cat:<c>' / 'price:<band>' -> forward-decayed weight
-- KEYS[4] u:{user}:seen    BF    items interacted with (BF.CARD = distinct items, the tier)
-- KEYS[5] u:{user}:peers:<model> ZSET  similar shoppers -> similarity (optional: the model's
--                                      peer list; absent key or KEYS[5] omitted = none)
-- ARGV[1] n_recent int  session items returned (newest first)
-- ARGV[2] n_hist   int  history items returned (strongest first)
-- ARGV[3] n_cats   int  affinity categories returned (strongest first)
-- ARGV[4] n_peers  int  similar shoppers returned (most similar first; optional, default 0)
-- Reply: {last_ts, interactions, n_recent, item.., n_cart, item.., n_hist, (item, weight)..,
--         n_cats, cat.., n_peers, (shopper, similarity)..}
--   last_ts: the session's newest event time ms ('0' = no session), as a string;
--   weight: the history item's interest relative to the strongest one (0..1, string): the
--   same number `recommend` uses as the 'hist' anchor weight (before the weight 'hist');
--   similarity: the model's cosine (string).
-- Errors: ERR_BADARG, ERR_KEYS. Writes nothing.
local function rec_context(keys, argv)
  if #keys ~= 4 and #keys ~= 5 then
    fail('ERR_KEYS', 'expected 4 or 5 keys (session, hist, aff, seen[, peers]), got ' .. #keys)
  end
  local session_key, hist_key, aff_key, seen_key = keys[1], keys[2], keys[3], keys[4]
  local n_recent = int(argv[1], 'n_recent')
  local n_hist = int(argv[2], 'n_hist')
  local n_cats = int(argv[3], 'n_cats')
  local n_peers = 0
  if argv[4] ~= nil then n_peers = int(argv[4], 'n_peers') end
  local s = REC.read_session(session_key, true)
  local reply = {tostring(s.last_ts), REC.interactions(seen_key)}
  local recent = {}
  for i = 1, math.min(n_recent, #s.recent) do recent[#recent + 1] = s.recent[i].item end
  reply[#reply + 1] = #recent
  for _, item in ipairs(recent) do reply[#reply + 1] = item end
  reply[#reply + 1] = #s.cart
  for _, line in ipairs(s.cart) do reply[#reply + 1] = line.item end
  local hist = {}
  if n_hist > 0 then hist = redis.call('ZREVRANGE', hist_key, 0, n_hist - 1, 'WITHSCORES') end
  reply[#reply + 1] = #hist / 2
  local hmax = tonumber(hist[2] or '0')
  for i = 1, #hist, 2 do
    reply[#reply + 1] = hist[i]
    reply[#reply + 1] = tostring(tonumber(hist[i + 1]) / hmax)
  end
  local _, _, order = REC.affinities(aff_key)
  local n = math.min(n_cats, #order)
  reply[#reply + 1] = n
  for i = 1, n do reply[#reply + 1] = order[i] end
  local peers = {}
  if n_peers > 0 and keys[5] ~= nil then
    peers = redis.call('ZREVRANGE', keys[5], 0, n_peers - 1, 'WITHSCORES')
  end
  reply[#reply + 1] = #peers / 2
  for i = 1, #peers do reply[#reply + 1] = peers[i] end
  return reply
end

-- The steps of `recommend` (below): parse ARGV, read the user's keys, filter and score, reply.

-- ARGV of `recommend`, validated (nothing is read before it all parses).
function REC.parse_argv(argv)
  local p = {
    now = int(argv[1], 'now_ms'),
    k = int(argv[2], 'k'),
    surface = argv[3],
    context_item = argv[4] or '',
    w = REC.weights(argv[5]),
    per_cat = int(argv[6], 'per_category'),
    half_life = int(argv[7], 'half_life_ms'),
    content_min = int(argv[8], 'content_min'),
    collab_min = int(argv[9], 'collab_min'),
    repurchase = int(argv[10], 'repurchase') == 1,
    excluded = REC.set(argv[11]),
    guards = REC.guards(argv[12]),
    min_price = num(argv[13], 'min_price'),
    max_price = num(argv[14], 'max_price'),
    only = REC.set(argv[15]),
    share = num(argv[16], 'personal_share'),
  }
  p.has_only = next(p.only) ~= nil
  if p.k < 1 or p.k > 200 then fail('ERR_BADARG', 'k must be 1..200, got ' .. p.k) end
  if not REC.SURFACES[p.surface] then fail('ERR_BADARG', 'unknown surface ' .. tostring(p.surface)) end
  if p.half_life <= 0 then fail('ERR_BADARG', 'half_life_ms must be > 0') end
  p.live_share = num(argv[17], 'live_share')
  local n_anchors = int(argv[18], 'n_anchors')
  p.anchors = {}
  for i = 1, n_anchors do p.anchors[i] = nonempty(argv[18 + i], 'anchor') end
  p.n_cands = int(argv[19 + n_anchors], 'n_candidates')
  local pos
  p.C, p.S, pos = REC.parse_candidates(argv, 20 + n_anchors, p.n_cands, n_anchors)
  if argv[pos] ~= nil then fail('ERR_BADARG', 'trailing arguments after the last candidate') end
  return p
end

-- What `recommend` reads (user slot only): session, tier, affinities, the anchors' history
-- weights (relative to the strongest item), traits, the seen set (unless repurchase), cart.
function REC.read_user(p, session_key, hist_key, aff_key, seen_key, profile_key)
  local u = {now = p.now}
  if u.now == 0 then u.now = now_ms() end
  u.session = REC.read_session(session_key, false)
  u.interactions = REC.interactions(seen_key)
  u.tier = REC.tier(u.interactions, p.content_min, p.collab_min)
  u.cat_aff, u.band_aff = REC.affinities(aff_key)
  u.hist = {}
  if #p.anchors > 0 then
    local top = redis.call('ZREVRANGE', hist_key, 0, 0, 'WITHSCORES')
    local hmax = tonumber(top[2] or '0')
    if hmax > 0 then
      local scores = redis.call('ZMSCORE', hist_key, unpack(p.anchors))
      for i, a in ipairs(p.anchors) do
        if scores[i] then u.hist[a] = tonumber(scores[i]) / hmax end
      end
    end
  end
  u.traits = {}
  local raw = redis.call('JSON.GET', profile_key, '$.traits')
  if raw then
    local t = cjson.decode(raw)[1]
    if type(t) == 'table' then u.traits = t end
  end
  u.seen = {}
  if not p.repurchase then
    for _, e in ipairs(u.session.recent) do u.seen[e.item] = true end
    if p.n_cands > 0 and redis.call('EXISTS', seen_key) == 1 then
      local flags = redis.call('BF.MEXISTS', seen_key, unpack(p.C.item))
      for i, f in ipairs(flags) do
        if f == 1 then u.seen[p.C.item[i]] = true end
      end
    end
  end
  u.in_cart = {}
  for _, line in ipairs(u.session.cart) do u.in_cart[line.item] = true end
  return u
end

-- Drop what must not be shown (each reason counted, in first-seen order), score the rest.
-- Returns the scored candidates, the counts by reason and the reasons' order.
function REC.filter_and_score(p, u, aw, live)
  local C, guards, traits = p.C, p.guards, u.traits
  local filtered, forder = {}, {}
  local function drop(reason)
    if filtered[reason] == nil then filtered[reason] = 0; forder[#forder + 1] = reason end
    filtered[reason] = filtered[reason] + 1
  end
  local m = REC.tier_weights(p.w, u.tier)
  local scored, done = {}, {}
  for i = 1, p.n_cands do
    local item, category, price, flags = C.item[i], C.category[i], C.price[i], C.flags[i]
    local guarded = false
    if flags ~= '' then
      for flag, _ in pairs(REC.set(flags)) do
        local trait = guards[flag]
        if trait ~= nil and not REC.truthy(traits[trait]) then guarded = true end
      end
    end
    if done[item] then drop('duplicate')
    elseif item == p.context_item then drop('context')
    elseif u.in_cart[item] then drop('cart')
    elseif u.seen[item] then drop('seen')
    elseif not C.stock[i] then drop('out_of_stock')
    elseif guarded then drop('guarded')
    elseif p.excluded[category] then drop('excluded')
    elseif (p.has_only and not p.only[category]) or (p.min_price > 0 and price < p.min_price)
        or (p.max_price > 0 and price > p.max_price) then drop('filtered')
    else
      local score, src, anchor, lsrc, lanchor = REC.score(C, p.S, i, m, p.w, aw, u.cat_aff,
                                                          u.band_aff, live)
      scored[#scored + 1] = {item = item, category = category, score = score,
                             best_src = src, best_anchor = anchor,
                             personal = anchor > 0 and REC.PERSONAL[src] == true,
                             live = lanchor > 0, live_src = lsrc, live_anchor = lanchor}
    end
    done[item] = true
  end
  return scored, filtered, forder
end

-- The reason of a chosen candidate and the anchor it names ('' = none): its strongest
-- source, or its live role when the live_share slots placed it.
function REC.reason(c, anchors, areason, live)
  local src, a, roles = c.best_src, c.best_anchor, areason
  if c.by_live then src, a, roles = c.live_src, c.live_anchor, live end
  if src == 'ct' and a > 0 then return 'similar', anchors[a] end
  if (src == 'nn' or src == 'co') and a > 0 then return roles[a], anchors[a] end
  if src == 'rb' then return 'rebuy', '' end
  if src == 'uk' then return 'peers', '' end
  if src == 'cat' then return 'category', '' end
  if src == 'tr' or src == 'rise' then return 'trending', '' end
  if src == 'new' then return 'new', '' end
  return 'popular', ''
end

-- recommend (no-writes): score, filter, diversify and explain candidates for one user.
--
-- KEYS (all with the user's tag):
--   KEYS[1] u:{user}:session JSON  recent items (type, ts), cart lines
--   KEYS[2] u:{user}:hist    ZSET  long-term item interest (anchor weight 'hist')
--   KEYS[3] u:{user}:aff     ZSET  category / price-band affinities (features aff, price)
--   KEYS[4] u:{user}:seen    BF    items interacted with: filter, and BF.CARD picks the tier
--   KEYS[5] u:{user}:profile JSON  traits (guardrails: e.g. age_verified)
-- ARGV:
--   [1]  now_ms          int  time the recency decay is measured at (0 = server time)
--   [2]  k               int  items wanted (1..200)
--   [3]  surface         str  home | product | cart
--   [4]  context_item    str  the product page's item ('' = none); never returned
--   [5]  weights         str  'name=value,...' over REC.DEFAULT_WEIGHTS (unknown name: error)
--   [6]  per_category    int  diversity: at most this many items per category (0 = no cap)
--   [7]  half_life_ms    int  recency half-life of session anchors
--   [8]  content_min     int  interactions from which the tier is 'content' (else 'cold')
--   [9]  collab_min      int  interactions from which the tier is 'collab'
--   [10] repurchase      int  1: items seen/bought before may come back (buy again); 0: filtered
--   [11] excluded        str  categories this surface never shows, 'a,b' ('' = none)
--   [12] guards          str  'flag=trait,...': a candidate with the flag needs a truthy trait
--   [13] min_price       num  0 = none
--   [14] max_price       num  0 = none
--   [15] only_categories str  'a,b' ('' = any)
--   [16] personal_share  num  blend: among the first i items at most ceil(share * i) are
--                             personal (collaborative / content / buy-again, tied to an anchor);
--                             the rest trending / popular / category tops (>= 1: no blend)
--   [17] live_share      num  among the first i items at least ceil(live_share * i) are tied to
--                             live intent of this session while such candidates remain (0: off;
--                             see REC.diversify)
--   [18] n_anchors       int, then n_anchors item ids (referenced below by 1-based index)
--   then n_candidates, per candidate:
--     item, category, price (num), in_stock (0|1), popularity (0..1), flags ('a,b' | ''),
--     n_sources, then n_sources x (code, value 0..1); code = anchor index * 10 + source,
--     anchor index 0 = global, source 1 nn | 2 co | 3 ct | 4 cat | 5 tr | 6 pop | 7 rb | 8 uk |
--     9 new | 0 rise
--     (see REC.DEFAULT_WEIGHTS); e.g. code 31 = nn neighbour of anchor 3
-- Reply: {tier, interactions, n_candidates, filtered ('reason=n,...'),
--         then per item: item, score (string), reason, anchor ('' = none), category}
--   reason: viewed | carted | bought | in_cart | context | history (collaborative, with the
--   anchor) | similar (content, with the anchor) | rebuy | peers (similar shoppers) |
--   category | trending | new (a new arrival) | popular.
--   Best first, at most k; fewer when the filters leave fewer (the caller fills up).
-- Filters, each counted: context, cart, seen (session recent or Bloom, unless repurchase),
--   out_of_stock, guarded, excluded, filtered (price / category), diversity.
-- Errors: ERR_BADARG, ERR_KEYS (nothing to undo: read-only). Writes nothing.
local function recommend(keys, argv)
  if #keys ~= 5 then fail('ERR_KEYS', 'expected 5 keys (session, hist, aff, seen, profile), got ' .. #keys) end
  local session_key, hist_key, aff_key, seen_key, profile_key = keys[1], keys[2], keys[3], keys[4], keys[5]
  local p = REC.parse_argv(argv)

  local u = REC.read_user(p, session_key, hist_key, aff_key, seen_key, profile_key)
  local aw, areason, live = REC.anchor_weights(p.anchors,
    {context = p.context_item, recent = u.session.recent, cart = u.session.cart, hist = u.hist},
    p.w, u.now, p.half_life)

  local scored, filtered, forder = REC.filter_and_score(p, u, aw, live)
  local top, skipped = REC.diversify(scored, p.k, p.per_cat, p.share, p.live_share)
  if skipped > 0 then
    forder[#forder + 1] = 'diversity'
    filtered.diversity = skipped
  end

  local parts = {}
  for _, r in ipairs(forder) do parts[#parts + 1] = r .. '=' .. filtered[r] end
  local reply = {u.tier, u.interactions, p.n_cands, table.concat(parts, ',')}
  for _, c in ipairs(top) do
    local reason, anchor = REC.reason(c, p.anchors, areason, live)
    reply[#reply + 1] = c.item
    reply[#reply + 1] = tostring(c.score)
    reply[#reply + 1] = reason
    reply[#reply + 1] = anchor
    reply[#reply + 1] = c.category
  end
  return reply
end

-- rec_track: long-term item history per user (the 'hist' anchors), from accepted events.
--
-- Called from the ingestion's phase 2 (app/recs/hook.py hook), so each accepted event counts
-- once. Forward decay like the affinities (00_common.lua): an event of weight w at time t adds
-- w * 2^((t - epoch) / half_life); the set keeps the `cap` strongest items.
-- KEYS[g] u:{user}:hist ZSET, one per user group (standalone: many users; cluster: one slot)
-- ARGV:
--   [1] epoch_ms int, [2] half_life_ms int, [3] cap int (items kept), [4] ttl_s int (sliding)
--   [5] weights str 'view=1,click=2,add_to_cart=4,purchase=8' (other types: not tracked)
--   then per KEYS entry: n_entries, then n_entries x (item, event type, ts_ms)
-- Reply: {entries_applied, items_trimmed}
-- Errors: ERR_BADARG (also: a half-life so short that the weight overflows), ERR_KEYS; raised
--   before the first write.
-- Writes: hist (ZINCRBY, trimmed to cap by lowest score, EXPIRE ttl_s).
local function rec_track(keys, argv)
  local epoch = int(argv[1], 'epoch_ms')
  local half_life = int(argv[2], 'half_life_ms')
  local cap = int(argv[3], 'cap')
  local ttl = int(argv[4], 'ttl_s')
  local weights = {}
  for name, value in string.gmatch(argv[5] or '', '([%w_]+)=([%d%.]+)') do
    weights[name] = num(value, 'weights.' .. name)
  end
  if half_life <= 0 or cap < 1 or ttl < 1 then fail('ERR_BADARG', 'half_life, cap and ttl must be > 0') end
  local groups, pos = {}, 6
  for g = 1, #keys do
    local n = int(argv[pos], 'n_entries')
    pos = pos + 1
    local entries = {}
    for e = 1, n do
      local entry = {item = nonempty(argv[pos], 'item'), type = argv[pos + 1],
                     ts = int(argv[pos + 2], 'ts')}
      local w = weights[entry.type]
      if w ~= nil and w > 0 then
        entry.inc = forward_weight(w, entry.ts, epoch, half_life)
        if entry.inc ~= entry.inc or entry.inc == math.huge then
          fail('ERR_BADARG', 'half_life_ms too short: the forward-decayed weight overflows')
        end
      end
      entries[e] = entry
      pos = pos + 3
    end
    groups[g] = entries
  end
  if argv[pos] ~= nil then fail('ERR_KEYS', 'more entry groups than keys') end
  local applied, trimmed = 0, 0
  for g, entries in ipairs(groups) do
    local touched = false
    for _, e in ipairs(entries) do
      if e.inc ~= nil then
        redis.call('ZINCRBY', keys[g], tostring(e.inc), e.item)
        applied = applied + 1
        touched = true
      end
    end
    if touched then
      local n = redis.call('ZCARD', keys[g])
      if n > cap then trimmed = trimmed + redis.call('ZREMRANGEBYRANK', keys[g], 0, -(cap + 1)) end
      redis.call('EXPIRE', keys[g], ttl)
    end
  end
  return {applied, trimmed}
end

-- rec_hot: real-time popularity (the 'pop' candidates and the fallback snapshot).
--
-- Called from the ingestion's phase 2 (app/recs/hook.py hook) for accepted events, so a
-- duplicate never counts twice. Forward decay (00_common.lua): an interaction of weight w at
-- time t adds w * 2^((t - epoch) / half_life); the set keeps the `cap` strongest items, so the
-- order is "popular over the last few half-lives", updated with every event.
-- KEYS[1] g:{g}:rec:hot ZSET item -> forward-decayed popularity
-- ARGV: [1] epoch_ms int, [2] half_life_ms int, [3] cap int, [4] ttl_s int (sliding),
--   then n x (item, weight num, ts_ms int)
-- Reply: {items_updated, items_trimmed}
-- Errors: ERR_BADARG (also: a half-life so short that the weight overflows), ERR_KEYS; raised
--   before the first write.
-- Writes: hot (ZINCRBY once per item, trimmed to cap by lowest score, EXPIRE ttl_s).
local function rec_hot(keys, argv)
  if #keys ~= 1 then fail('ERR_KEYS', 'expected 1 key (hot), got ' .. #keys) end
  local epoch = int(argv[1], 'epoch_ms')
  local half_life = int(argv[2], 'half_life_ms')
  local cap = int(argv[3], 'cap')
  local ttl = int(argv[4], 'ttl_s')
  if half_life <= 0 or cap < 1 or ttl < 1 then fail('ERR_BADARG', 'half_life, cap and ttl must be > 0') end
  if (#argv - 4) % 3 ~= 0 then fail('ERR_BADARG', 'entries must be (item, weight, ts) triples') end
  local inc, order = {}, {}
  for i = 5, #argv, 3 do
    local item = nonempty(argv[i], 'item')
    local w = forward_weight(num(argv[i + 1], 'weight'), int(argv[i + 2], 'ts'), epoch, half_life)
    if w ~= w or w == math.huge then fail('ERR_BADARG', 'half_life_ms too short: the weight overflows') end
    if inc[item] == nil then inc[item] = 0; order[#order + 1] = item end
    inc[item] = inc[item] + w
  end
  for _, item in ipairs(order) do redis.call('ZINCRBY', keys[1], tostring(inc[item]), item) end
  local trimmed = 0
  if #order > 0 then
    if redis.call('ZCARD', keys[1]) > cap then
      trimmed = redis.call('ZREMRANGEBYRANK', keys[1], 0, -(cap + 1))
    end
    redis.call('EXPIRE', keys[1], ttl)
  end
  return {#order, trimmed}
end

redis.register_function{function_name = 'rec_context', callback = rec_context, flags = {'no-writes'}}
redis.register_function{function_name = 'recommend', callback = recommend, flags = {'no-writes'}}
redis.register_function{function_name = 'rec_track', callback = rec_track}
redis.register_function{function_name = 'rec_hot', callback = rec_hot}
