-- ingest_aggregates (local logic, not registered): apply logged events to the aggregates of
-- one aggregate shard. Called by `apply_blocks` (lua/80_ingest.lua), which makes it
-- exactly-once per log entry; the aggregate workers (app/ingest/aggregates.py) build its input.
--
-- Purpose: trending Top-K per event type and hour bucket, Count-Min Sketch counts, per-item
--   RedisTimeSeries counters, co-occurrence. (k_log is always 0 in layout 2: the log is
--   written by ingest_partition.)
--   Increments to one Top-K / CMS key are summed in Lua and sent as one command per key.
--   All input is validated before the first write.
--
-- KEYS: a de-duplicated list; ARGV refers to keys by 1-based index (0 = not in this call).
--   Patterns (see docs/keys.md), all in one shard {a<n>}: g:{a<n>}:wm (STRING, the shard's
--   trending watermark ms), g:{a<n>}:trend:<type>:<hour> (TOPK), g:{a<n>}:cms:<type> (CMS),
--   i:{a<n>}:<item>:ts:<type> (TS raw, minute buckets), i:{a<n>}:<item>:ts:<type>:1h (TS
--   hourly sums), i:{a<n>}:<item>:co:v / :co:b (ZSET).
--
-- ARGV:
--   [1] log_maxlen         int  approximate cap of the log stream (XADD MAXLEN ~)
--   [2] trend_ttl_s        int  TTL of an hour bucket after its last write
--   [3] item_ttl_s         int  sliding TTL of co-occurrence sets (series are bounded by
--                               their retention instead: no per-call EXPIRE on them)
--   [4] co_cap             int  neighbours kept per item and kind (lowest scores dropped)
--   [5] raw_retention_ms   int  retention of minute series
--   [6] hour_retention_ms  int  retention of hourly series
--   [7] topk               int  k of a new Top-K bucket (TOPK.RESERVE k 1000 5 0.925)
--   [8] cms_width          int  width of a new CMS (depth 5)
--   [9] trend_window_ms    int  events older than watermark - window skip trending
--   [10] n_events          int
--   per event: event_id, type, user, ts_ms, payload(JSON for the log), k_log, k_wm, n_items,
--     then n_items x (item, qty, k_trend, k_cms, k_ts, k_ts_hour)
--   then: n_pairs, per pair: k_co, other_item, weight
--
-- Reply: {events_logged, items_counted, pairs_applied, samples_dropped, old_wm, new_wm}
--   samples_dropped: per-item samples older than their series' raw retention (not an error);
--   old_wm/new_wm: trending watermark before/after (ms, strings; '0' = none) so the client
--   can drop hour buckets that left the trending window.
-- Errors: ERR_BADARG, ERR_KEYS (index out of range): raised before the first write.
-- Writes: log (XADD MAXLEN ~), wm (SET, no TTL: one small string), trend buckets (TOPK.INCRBY,
--   EXPIRE trend_ttl_s), cms (CMS.INCRBY; fixed size, no TTL), item series (TS.MADD; created
--   with RETENTION raw/hourly, which bounds them: no TTL), co-occurrence (ZINCRBY, trim to
--   co_cap, EXPIRE item_ttl_s).

local MINUTE_MS = 60000
-- Lua's unpack takes at most ~8,000 values: a worker step can carry far more (many blocks).
local UNPACK_MAX = 3000

-- `cmd key m1 v1 m2 v2 ...` in chunks of at most UNPACK_MAX arguments (an even number).
local function call_member_chunks(cmd, key, args)
  for i = 1, #args, UNPACK_MAX do
    redis.call(cmd, key, unpack(args, i, math.min(i + UNPACK_MAX - 1, #args)))
  end
end

-- The validated input of ingest_aggregates (its ARGV layout above); raises before any write.
local function agg_parse(keys, argv)
  local cfg = {
    log_maxlen = int(argv[1], 'log_maxlen'), trend_ttl = int(argv[2], 'trend_ttl_s'),
    item_ttl = int(argv[3], 'item_ttl_s'), co_cap = int(argv[4], 'co_cap'),
    raw_retention = int(argv[5], 'raw_retention_ms'),
    hour_retention = int(argv[6], 'hour_retention_ms'), topk = int(argv[7], 'topk'),
    cms_width = int(argv[8], 'cms_width'), trend_window = int(argv[9], 'trend_window_ms'),
  }
  local n_events = int(argv[10], 'n_events')
  local events = {}
  local pos = 11
  for e = 1, n_events do
    local ev = {
      id = nonempty(argv[pos], 'event_id'), type = argv[pos + 1], user = argv[pos + 2],
      ts = int(argv[pos + 3], 'ts'), payload = argv[pos + 4] or '',
      log = key_at(keys, argv[pos + 5], 'k_log'), wm = key_at(keys, argv[pos + 6], 'k_wm'),
      items = {},
    }
    if not EVENT_TYPES[ev.type] then fail('ERR_BADARG', 'unknown event type ' .. tostring(ev.type)) end
    local n_items = int(argv[pos + 7], 'n_items')
    pos = pos + 8
    for i = 1, n_items do
      ev.items[i] = {
        item = nonempty(argv[pos], 'item_id'), qty = num(argv[pos + 1], 'qty'),
        trend = key_at(keys, argv[pos + 2], 'k_trend'), cms = key_at(keys, argv[pos + 3], 'k_cms'),
        ts = key_at(keys, argv[pos + 4], 'k_ts'), ts_hour = key_at(keys, argv[pos + 5], 'k_ts_hour'),
      }
      pos = pos + 6
    end
    events[e] = ev
  end
  local n_pairs = int(argv[pos], 'n_pairs')
  pos = pos + 1
  local co_pairs = {}
  for p = 1, n_pairs do
    co_pairs[p] = {
      key = key_at(keys, argv[pos], 'k_co'), other = nonempty(argv[pos + 1], 'other_item'),
      weight = num(argv[pos + 2], 'weight'),
    }
    pos = pos + 3
  end
  return cfg, events, co_pairs
end

-- Increments summed per key and member, keys and members in first-seen order, so each
-- Top-K / CMS / series gets one command per call.
local function agg_sums()
  local sums = {by_key = {}, order = {}}
  function sums.add(key, member, by)
    local bucket = sums.by_key[key]
    if bucket == nil then
      bucket = {members = {}, list = {}}
      sums.by_key[key] = bucket
      sums.order[#sums.order + 1] = key
    end
    if bucket.members[member] == nil then
      bucket.members[member] = 0
      bucket.list[#bucket.list + 1] = member
    end
    bucket.members[member] = bucket.members[member] + by
  end
  return sums
end

-- `cmd key member count ...` once per summed key, the key created by `create` when absent.
local function agg_write_counts(sums, cmd, create, ttl)
  for _, key in ipairs(sums.order) do
    if redis.call('EXISTS', key) == 0 then create(key) end
    local args = {}
    for _, member in ipairs(sums.by_key[key].list) do
      args[#args + 1] = member
      args[#args + 1] = sums.by_key[key].members[member]
    end
    call_member_chunks(cmd, key, args)
    if ttl then redis.call('EXPIRE', key, ttl) end
  end
end

-- Per-item series: one TS.MADD for every (series, minute) of the call; the series'
-- DUPLICATE_POLICY SUM turns a sample at an existing minute into an increment. Series that
-- do not exist yet come back as per-element errors: create them (with the hourly rule) and
-- add their samples then. A sample older than a series' retention (counted back from its
-- newest sample) is refused by RedisTimeSeries and counted as dropped, not an error.
-- Returns the number dropped, or nil and the error of an unexpected refusal.
local function agg_write_series(series, cfg)
  local madd, madd_refs = {}, {}
  for _, key in ipairs(series.order) do
    local s = series.by_key[key]
    table.sort(s.list)
    for _, minute in ipairs(s.list) do
      madd[#madd + 1] = key; madd[#madd + 1] = minute; madd[#madd + 1] = s.members[minute]
      madd_refs[#madd_refs + 1] = {key, minute}
    end
  end
  local dropped = 0
  local missing, missing_order = {}, {}
  local res = {}
  for i = 1, #madd, UNPACK_MAX do  -- UNPACK_MAX is a multiple of 3: whole samples per chunk
    local part = redis.call('TS.MADD', unpack(madd, i, math.min(i + UNPACK_MAX - 1, #madd)))
    for _, r in ipairs(part) do res[#res + 1] = r end
  end
  for i, r in ipairs(res) do
    if type(r) == 'table' and r.err then
      local key = madd_refs[i][1]
      if string.find(r.err, 'older than retention', 1, true) then
        dropped = dropped + 1
      elseif missing[key] ~= nil then
        table.insert(missing[key], madd_refs[i][2])
      elseif string.find(r.err, 'not a TSDB key', 1, true) and redis.call('EXISTS', key) == 0 then
        missing[key] = {madd_refs[i][2]}
        missing_order[#missing_order + 1] = key
      else
        return nil, r.err
      end
    end
  end
  for _, key in ipairs(missing_order) do
    local s = series.by_key[key]
    redis.call('TS.CREATE', key, 'RETENTION', cfg.raw_retention, 'CHUNK_SIZE', 256,
      'DUPLICATE_POLICY', 'SUM')
    if s.hour_key then
      if redis.call('EXISTS', s.hour_key) == 0 then
        redis.call('TS.CREATE', s.hour_key, 'RETENTION', cfg.hour_retention, 'CHUNK_SIZE', 256,
          'DUPLICATE_POLICY', 'SUM')
      end
      redis.call('TS.CREATERULE', key, s.hour_key, 'AGGREGATION', 'sum', 3600000)
    end
    for _, minute in ipairs(missing[key]) do
      redis.call('TS.ADD', key, minute, s.members[minute])
    end
  end
  return dropped
end

local function agg_write_co(co_pairs, cfg)
  local co_keys = {}
  for _, p in ipairs(co_pairs) do
    redis.call('ZINCRBY', p.key, p.weight, p.other)
    co_keys[p.key] = true
  end
  for key, _ in pairs(co_keys) do
    if redis.call('ZCARD', key) > cfg.co_cap then
      redis.call('ZREMRANGEBYRANK', key, 0, -(cfg.co_cap + 1))
    end
    redis.call('EXPIRE', key, cfg.item_ttl)
  end
end

local function ingest_aggregates(keys, argv)
  local cfg, events, co_pairs = agg_parse(keys, argv)

  -- The watermark (newest event time seen) decides what is still "trending now".
  local wm_key, old_wm, new_wm = nil, 0, 0
  for _, ev in ipairs(events) do
    if ev.wm then
      if wm_key == nil then
        wm_key = ev.wm
        old_wm = tonumber(redis.call('GET', wm_key) or '0')
        new_wm = old_wm
      end
      if ev.ts > new_wm then new_wm = ev.ts end
    end
  end
  if wm_key ~= nil and new_wm > old_wm then redis.call('SET', wm_key, new_wm) end

  local trend, cms, series = agg_sums(), agg_sums(), agg_sums()
  local logged, counted = 0, 0
  for _, ev in ipairs(events) do
    if ev.log then
      redis.call('XADD', ev.log, 'MAXLEN', '~', cfg.log_maxlen, '*',
        'type', ev.type, 'user', ev.user, 'data', ev.payload)
      logged = logged + 1
    end
    local trending_now = ev.ts >= new_wm - cfg.trend_window
    -- Purchases count units bought; other events count one interaction.
    for _, it in ipairs(ev.items) do
      local units = 1
      if ev.type == 'purchase' then units = math.max(1, math.floor(it.qty)) end
      if it.trend and trending_now then trend.add(it.trend, it.item, units) end
      if it.cms then cms.add(it.cms, it.item, units) end
      if it.ts then
        series.add(it.ts, ev.ts - (ev.ts % MINUTE_MS), units)
        series.by_key[it.ts].hour_key = it.ts_hour
      end
      counted = counted + 1
    end
  end

  agg_write_counts(trend, 'TOPK.INCRBY',
    function(key) redis.call('TOPK.RESERVE', key, cfg.topk, 1000, 5, 0.925) end, cfg.trend_ttl)
  agg_write_counts(cms, 'CMS.INCRBY',
    function(key) redis.call('CMS.INITBYDIM', key, cfg.cms_width, 5) end, nil)
  local dropped, err = agg_write_series(series, cfg)
  if dropped == nil then return redis.error_reply(err) end
  agg_write_co(co_pairs, cfg)
  return {logged, counted, #co_pairs, dropped, tostring(old_wm), tostring(new_wm)}
end
