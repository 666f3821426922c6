-- exp_track: experiment metrics in one experiment's slot (docs/recommendations.md).
--
-- Purpose: count exposures (a served recommendation list) and attributed clicks, carts,
--   purchases and revenue per variant, as totals and as per-minute TimeSeries, and keep a
--   capped log of exposures (which list, which user, which items) for offline analysis.
--   Exposures come from the serving layer (buffered, app/recs/experiments.py); attributed events
--   from the ingestion's phase 2 (app/recs/hook.py), so each accepted event counts once.
--
-- KEYS (all with the experiment's tag {exp}):
--   KEYS[1]    x:{exp}:n                      HASH   '<variant>:<metric>' -> total
--   KEYS[2]    x:{exp}:log                    STREAM exposures (MAXLEN ~ log_maxlen)
--   KEYS[3..n] x:{exp}:ts:<variant>:<metric>  TS     per-minute sums (DUPLICATE_POLICY SUM)
-- ARGV:
--   [1] retention_ms  int  retention of the series
--   [2] ttl_s         int  sliding TTL of every key of the experiment
--   [3] log_maxlen    int  approximate cap of the exposure log
--   [4] bucket_ms     int  series resolution (samples are summed per bucket)
--   [5] n_incr        int, then n_incr x (k_ts (3..n), field '<variant>:<metric>', ts_ms, value)
--   then n_log        int, then n_log x (rec_id, user, variant, surface, items 'a,b,c', ts_ms)
-- Reply: {increments, samples_dropped, logged}
--   samples_dropped: samples older than their series' retention (the total still counts them).
-- Errors: ERR_BADARG, ERR_KEYS, raised before the first write.
-- Writes: n (HINCRBYFLOAT), series (TS.CREATE RETENTION, TS.ADD ON_DUPLICATE SUM), log (XADD
--   MAXLEN ~), EXPIRE ttl_s on each key written.
local function exp_track(keys, argv)
  if #keys < 2 then fail('ERR_KEYS', 'expected at least 2 keys (counts, log), got ' .. #keys) end
  local counts_key, log_key = keys[1], keys[2]
  local retention = int(argv[1], 'retention_ms')
  local ttl = int(argv[2], 'ttl_s')
  local maxlen = int(argv[3], 'log_maxlen')
  local bucket = int(argv[4], 'bucket_ms')
  if bucket < 1 or ttl < 1 then fail('ERR_BADARG', 'bucket_ms and ttl_s must be > 0') end
  local n_incr = int(argv[5], 'n_incr')
  local pos = 6
  local incs = {}
  for i = 1, n_incr do
    local idx = int(argv[pos], 'k_ts')
    if idx < 3 or keys[idx] == nil then fail('ERR_KEYS', 'k_ts out of range: ' .. idx) end
    incs[i] = {key = keys[idx], field = nonempty(argv[pos + 1], 'field'),
               ts = int(argv[pos + 2], 'ts'), value = num(argv[pos + 3], 'value')}
    pos = pos + 4
  end
  local n_log = int(argv[pos], 'n_log')
  pos = pos + 1
  local logs = {}
  for i = 1, n_log do
    logs[i] = {argv[pos], argv[pos + 1], argv[pos + 2], argv[pos + 3], argv[pos + 4],
               int(argv[pos + 5], 'log ts')}
    pos = pos + 6
  end
  if argv[pos] ~= nil then fail('ERR_BADARG', 'trailing arguments') end

  local dropped = 0
  local touched = {}
  for _, inc in ipairs(incs) do
    redis.call('HINCRBYFLOAT', counts_key, inc.field, tostring(inc.value))
    if redis.call('EXISTS', inc.key) == 0 then
      redis.call('TS.CREATE', inc.key, 'RETENTION', retention, 'DUPLICATE_POLICY', 'SUM')
    end
    local t = inc.ts - (inc.ts % bucket)
    local res = redis.pcall('TS.ADD', inc.key, t, tostring(inc.value), 'ON_DUPLICATE', 'SUM')
    if type(res) == 'table' and res.err then
      if string.find(res.err, 'older than retention', 1, true) then
        dropped = dropped + 1
      else
        return redis.error_reply(res.err)
      end
    end
    touched[inc.key] = true
  end
  for key, _ in pairs(touched) do redis.call('EXPIRE', key, ttl) end
  if n_incr > 0 then redis.call('EXPIRE', counts_key, ttl) end
  for _, e in ipairs(logs) do
    redis.call('XADD', log_key, 'MAXLEN', '~', maxlen, '*', 'rec_id', e[1], 'user', e[2],
      'variant', e[3], 'surface', e[4], 'items', e[5], 'ts', e[6])
  end
  if n_log > 0 then redis.call('EXPIRE', log_key, ttl) end
  return {n_incr, dropped, n_log}
end

redis.register_function{function_name = 'exp_track', callback = exp_track}
