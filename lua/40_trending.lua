-- trending (no-writes): what is trending now, merged from hourly Top-K buckets.
--
-- Purpose: "trending now" means now: each hour bucket's counts are weighted by
--   2^(-age / half_life), where age is measured from the trending watermark (the newest event
--   time seen), so a replay of last year's data and a live shop both get a sensible answer.
--
-- KEYS[1..n]  g:{g}:trend:<type>:<hour>  TOPK  newest bucket first (the client lists the
--             buckets covering the window ending at the watermark)
-- ARGV[1] watermark_ms int, ARGV[2] half_life_ms int, ARGV[3] k int,
-- ARGV[4..n+3] bucket start ms for each key, same order as KEYS
-- Reply: {item1, score1, count1, item2, ...}: score (decayed count, string) and raw count
--   (string), highest score first, at most k items.
-- Errors: ERR_BADARG, ERR_KEYS (a bucket time per key). Writes nothing.
local HOUR_MS = 3600000

local function trending(keys, argv)
  local watermark = int(argv[1], 'watermark_ms')
  local half_life = int(argv[2], 'half_life_ms')
  local k = int(argv[3], 'k')
  if #argv - 3 ~= #keys then fail('ERR_KEYS', 'one bucket time per key expected') end
  local score, count, order = {}, {}, {}
  for i, key in ipairs(keys) do
    local bucket_start = int(argv[3 + i], 'bucket_ms')
    -- The bucket's midpoint (capped at the watermark) stands for its events' time.
    local mid = math.min(bucket_start + HOUR_MS / 2, watermark)
    local weight = 2 ^ (-(watermark - mid) / half_life)
    if redis.call('EXISTS', key) == 1 then
      local listed = redis.call('TOPK.LIST', key, 'WITHCOUNT')
      for j = 1, #listed, 2 do
        local item, c = listed[j], tonumber(listed[j + 1])
        if score[item] == nil then
          score[item] = 0; count[item] = 0; order[#order + 1] = item
        end
        score[item] = score[item] + c * weight
        count[item] = count[item] + c
      end
    end
  end
  table.sort(order, function(a, b)
    if score[a] == score[b] then return a < b end
    return score[a] > score[b]
  end)
  local reply = {}
  for i = 1, math.min(k, #order) do
    local item = order[i]
    reply[#reply + 1] = item
    reply[#reply + 1] = tostring(score[item])
    reply[#reply + 1] = tostring(count[item])
  end
  return reply
end

redis.register_function{function_name = 'trending', callback = trending, flags = {'no-writes'}}
