-- Log-first ingestion (docs/keys.md, "Partitions, log and workers"): the acknowledged write
-- (`ingest_partition`) and the workers' exactly-once apply (`apply_blocks`). This file comes
-- last in the library so both can call the local logic of the earlier files: the shopper
-- state (10_ingest_user.lua), the aggregates (20_ingest_aggregates.lua), the recommender's
-- trackers (60_recommend.lua, 65_experiments.lua) and the feature store (70_features.lua).

-- ingest_partition: the acknowledged write of one partition's events, atomically.
--
-- Purpose: when this returns, each accepted event is in the partition's log and its effects
--   are in its shopper's state (session, cart, recent items, affinities, seen filter, online
--   user features), or - if the call failed - nothing is written. Duplicates (event ids in the
--   shopper's dedup set, or repeated within the call) are neither logged nor applied, so a
--   retried batch after a crash completes what was missing and nothing twice. Aggregates are
--   not touched here: workers derive them from the log (apply_blocks).
--
-- KEYS, all with the partition's hash tag {p<n>}:
--   KEYS[1]            log:{p<n>}                  STREAM  the partition's event log
--   KEYS[2..1+4G]      per user group: session, dedup, aff, seen (lua/10_ingest_user.lua)
--   KEYS[2+4G..]       packed feature states of these shoppers (u:{p<n>}:<user>:fs,
--                      u:{p<n>}:<user>:fsc:<category>; STRING), referenced by k_state below
-- ARGV:
--   [1..15] and the G user groups: exactly as documented in lua/10_ingest_user.lua
--   then: log_maxlen int (approximate cap of the log stream, XADD MAXLEN ~)
--   then per event, in input order (group by group): user str (the shopper's identity, the
--     log entry's `user` field), payload str (the event's JSON: the entry's `data` field,
--     app/core/events.py Event.payload)
--   then: n_feature_groups int (0: no feature work), and when > 0: spec str (compiled feature
--     spec), then per group: k_state int (1-based index into the feature keys), entity str
--     ('user' | 'user_category'), n_events int, then per event: ack_idx int (1-based input
--     position of the event in this call), type, ts_ms, user, session_id, n_lines, then
--     n_lines x (item_id, qty, price, category) (lua/70_features.lua features_ingest layout)
-- Reply: {statuses, logged, last_id}
--   statuses: one char per event in input order: 'A' accepted, 'D' duplicate
--   logged: entries appended to the log; last_id: the last entry's id ('' when none)
-- Errors: ERR_BADARG, ERR_KEYS: raised before the first write (features_ingest validates
--   its part before it writes, and runs before every other write here).
-- Writes: the shopper keys (lua/10_ingest_user.lua), packed feature states (lua/70_features.lua),
--   the log (XADD MAXLEN ~ log_maxlen, fields: type, user, data, and pairs when the event
--   produced co-occurrence pairs: 'a b kind weight' joined by ';'). No TTL on the log: its
--   MAXLEN bounds it (workers' lag is watched in /health before entries could go unread).

-- The feature section with the duplicates' events left out (features_ingest layout), and the
-- next ARGV position. `accepted[idx]` says whether input event idx was accepted.
local function accepted_feature_args(argv, pos, accepted, n_fkeys)
  local n_groups = int(argv[pos], 'n_feature_groups')
  if n_groups == 0 then return nil, pos + 1 end
  local out = {nonempty(argv[pos + 1], 'spec'), n_groups}
  pos = pos + 2
  for _ = 1, n_groups do
    local k = int(argv[pos], 'k_state')
    if k < 1 or k > n_fkeys then fail('ERR_KEYS', 'k_state ' .. k .. ' is not a feature key') end
    out[#out + 1] = argv[pos]
    out[#out + 1] = argv[pos + 1]
    local n_events = int(argv[pos + 2], 'n_events')
    local count_at = #out + 1
    out[count_at] = 0
    pos = pos + 3
    local kept = 0
    for _ = 1, n_events do
      local idx = int(argv[pos], 'ack_idx')
      if accepted[idx] == nil then fail('ERR_BADARG', 'ack_idx ' .. idx .. ' is not an event of this call') end
      local stop = pos + 6 + 4 * int(argv[pos + 5], 'n_lines')
      if accepted[idx] then
        for i = pos + 1, stop - 1 do out[#out + 1] = argv[i] end
        kept = kept + 1
      end
      pos = stop
    end
    out[count_at] = kept
  end
  return out, pos
end

local function pairs_text(list)
  local parts = {}
  for i, p in ipairs(list) do parts[i] = p[1] .. ' ' .. p[2] .. ' ' .. p[3] .. ' 1' end
  return table.concat(parts, ';')
end

local function ingest_partition(keys, argv)
  local log_key = keys[1]
  local cfg = ingest_config(argv)
  local groups, pos = parse_groups(keys, argv, 1)
  local log_maxlen = int(argv[pos], 'log_maxlen')
  pos = pos + 1
  local n_events = 0
  for _, grp in ipairs(groups) do
    for _, ev in ipairs(grp.events) do
      n_events = n_events + 1
      ev.user = nonempty(argv[pos], 'user')
      ev.payload = nonempty(argv[pos + 1], 'payload')
      pos = pos + 2
    end
  end
  -- Reads only: which events are new.
  mark_duplicates(groups)
  local accepted, idx = {}, 0
  for _, grp in ipairs(groups) do
    for _, ev in ipairs(grp.events) do
      idx = idx + 1
      accepted[idx] = not ev.dup
    end
  end
  local n_user_keys = 1 + 4 * #groups
  local fkeys = {}
  for i = n_user_keys + 1, #keys do fkeys[#fkeys + 1] = keys[i] end
  local fargs
  fargs, pos = accepted_feature_args(argv, pos, accepted, #fkeys)
  if argv[pos] ~= nil then fail('ERR_BADARG', 'trailing arguments after the feature section') end

  -- Writes: features first (they validate their own section before writing), then the
  -- shopper state, then the log.
  if fargs ~= nil then features_ingest(fkeys, fargs) end
  local statuses, applied = apply_user_groups(cfg, groups, now_ms())
  local logged, last_id = 0, ''
  for _, list in ipairs(applied) do
    for _, ev in ipairs(list) do
      local fields = {'type', ev.type, 'user', ev.user, 'data', ev.payload}
      if ev.pairs ~= nil and #ev.pairs > 0 then
        fields[#fields + 1] = 'pairs'
        fields[#fields + 1] = pairs_text(ev.pairs)
      end
      last_id = redis.call('XADD', log_key, 'MAXLEN', '~', log_maxlen, '*', unpack(fields))
      logged = logged + 1
    end
  end
  return {statuses, logged, last_id}
end

-- apply_blocks: apply log-derived effects to one slot exactly once per log entry.
--
-- Purpose: the aggregate workers read partition logs in batches ("blocks": one partition's
--   entries up to a log id) and send each target slot one call holding the blocks' effects.
--   The slot keeps, per (kind, partition), the last log id it applied; a block whose last id
--   is not newer is skipped, so a worker killed at any moment and restarted (re-reading its
--   pending entries) double-counts nothing; the mark and the effects are written atomically.
--   The effects of all new blocks are concatenated and applied by ONE call of the kind's
--   Function logic, which sums per key first (one TOPK.INCRBY / CMS.INCRBY / TS.MADD per key).
--
-- KEYS[1]     applied  HASH  '<kind>:<partition>' -> last applied log id ('<ms>-<seq>')
-- KEYS[2..n]  the keys of the kind's logic (its own KEYS, in its order)
-- ARGV:
--   [1] kind      str  'aggregates' (20_ingest_aggregates.lua), 'features' (the
--                      features_ingest layout, 70_features.lua; an entity in several blocks
--                      is merged into one group), 'rec_hot', 'rec_track' (60_recommend.lua),
--                      'exp_track' (65_experiments.lua)
--   [2] n_header  int, then n_header header arguments (the kind's leading ARGV)
--   then n_blocks int, per block: partition str, first_id str and last_id str (the block covers
--     the partition's log entries first_id..last_id, '<ms>-<seq>'), then per list of
--     the kind (aggregates: events, pairs; features: groups; exp_track: increments, log
--     entries; rec_hot, rec_track: one uncounted list): n_records int (counted lists only),
--     n_args int, then n_args arguments (key references are indices into KEYS[2..n])
-- A block whose last_id is not newer than the mark is skipped (already applied); one whose
--   first_id is newer than the mark is applied; a mark inside a block (first_id <= mark <
--   last_id: the block overlaps what was applied) is refused, never half-applied.
-- Reply: {applied_blocks, skipped_blocks, kind_reply}  (kind_reply: the logic's reply or '')
-- Errors: ERR_BADARG, ERR_KEYS, ERR_OVERLAP: raised before the first write (the kind's logic
--   validates the
--   combined arguments before its own writes, and runs before the marks are written).
-- Writes: the kind's keys (see its contract), then applied (HSET; one small field per kind and
--   partition: bounded by kinds x partitions, no TTL).

-- The `features` kind: one item can be in several blocks (seen through several partitions)
-- while features_ingest takes each entity once, so the fresh blocks' groups are merged by key
-- here, all parsed and every state read (validated) before the first write, then applied with
-- the feature store's own logic (lua/70_features.lua features_apply).
-- `blocks`: per fresh block its one list {n = groups, args = {...}} (features_ingest layout).
local function apply_feature_blocks(kkeys, header, blocks)
  local spec = feature_spec(header[1])
  local by_key, order = {}, {}
  for _, lists in ipairs(blocks) do
    local args, pos = lists[1].args, 1
    for _ = 1, lists[1].n do
      local key = key_at(kkeys, args[pos], 'k_state')
      if key == nil then fail('ERR_KEYS', 'k_state must not be 0') end
      local ent_name = args[pos + 1]
      if spec.ent[ent_name or ''] == nil then fail('ERR_BADARG', 'unknown entity ' .. tostring(ent_name)) end
      local events
      events, pos = features_parse_events(args, pos + 3, int(args[pos + 2], 'n_events'))
      local grp = by_key[key]
      if grp == nil then
        grp = {key = key, ent_name = ent_name, events = {}}
        by_key[key] = grp
        order[#order + 1] = grp
      elseif grp.ent_name ~= ent_name then
        fail('ERR_BADARG', 'one state key for two entity types')
      end
      for _, ev in ipairs(events) do grp.events[#grp.events + 1] = ev end
    end
    if args[pos] ~= nil then fail('ERR_BADARG', 'unexpected arguments after the last group') end
  end
  for _, grp in ipairs(order) do grp.st = state_stored(redis.call('GET', grp.key)) end
  local written, trimmed = 0, 0
  for _, grp in ipairs(order) do
    local w, t = features_apply(spec, grp.key, grp.ent_name, grp.events, grp.st)
    written, trimmed = written + w, trimmed + t
  end
  return {#order, written, trimmed}
end

-- Lists per kind: true = counted (the combined list is preceded by the total record count),
-- false = uncounted (the records follow the header directly). rec_track takes one block.
-- `fn` takes the fresh blocks' lists concatenated; `run` (features) takes them per block.
local BLOCK_KINDS = {
  aggregates = {fn = function(k, a) return ingest_aggregates(k, a) end, lists = {true, true}},
  features = {run = apply_feature_blocks, lists = {true}},
  rec_hot = {fn = function(k, a) return rec_hot(k, a) end, lists = {false}},
  rec_track = {fn = function(k, a) return rec_track(k, a) end, lists = {false}, single = true},
  exp_track = {fn = function(k, a) return exp_track(k, a) end, lists = {true, true}},
}

-- '<ms>-<seq>' -> ms, seq (numbers); raises on anything else.
local function log_id(value, name)
  local ms, seq = string.match(value or '', '^(%d+)%-(%d+)$')
  if ms == nil then fail('ERR_BADARG', name .. ' must be a stream id <ms>-<seq>, got ' .. tostring(value)) end
  return tonumber(ms), tonumber(seq)
end

local function newer_id(a, b)
  local ams, aseq = log_id(a, 'log id')
  local bms, bseq = log_id(b, 'log id')
  return ams > bms or (ams == bms and aseq > bseq)
end

local function apply_blocks(keys, argv)
  local applied_key = keys[1]
  local kind = BLOCK_KINDS[argv[1] or '']
  if kind == nil then fail('ERR_BADARG', 'unknown kind ' .. tostring(argv[1])) end
  local n_header = int(argv[2], 'n_header')
  local pos = 3 + n_header
  local n_blocks = int(argv[pos], 'n_blocks')
  pos = pos + 1
  if kind.single and n_blocks > 1 then fail('ERR_BADARG', argv[1] .. ' takes one block per call') end
  local lists, fresh_blocks = {}, {}
  for l = 1, #kind.lists do lists[l] = {n = 0, args = {}} end
  local marks, fields, skipped = {}, {}, 0
  for b = 1, n_blocks do
    local source = nonempty(argv[pos], 'partition')
    local first_id, last_id = argv[pos + 1], argv[pos + 2]
    log_id(first_id, 'first_id')
    log_id(last_id, 'last_id')
    if newer_id(first_id, last_id) then fail('ERR_BADARG', 'first_id is after last_id') end
    pos = pos + 3
    local field = argv[1] .. ':' .. source
    if fields[field] then fail('ERR_BADARG', 'partition ' .. source .. ' appears twice') end
    fields[field] = true
    local prev = redis.call('HGET', applied_key, field)
    local fresh = prev == false or newer_id(first_id, prev)
    if not fresh and newer_id(last_id, prev) then
      fail('ERR_OVERLAP', 'block ' .. first_id .. '..' .. last_id .. ' of ' .. source ..
        ' overlaps the applied mark ' .. prev)
    end
    local own = {}
    for l, counted in ipairs(kind.lists) do
      local n_records = 0
      if counted then n_records = int(argv[pos], 'n_records'); pos = pos + 1 end
      local n_args = int(argv[pos], 'n_args')
      if n_args < 0 or pos + n_args > #argv then fail('ERR_BADARG', 'n_args out of range') end
      if fresh then
        -- Concatenated for `fn`, kept per block for `run`.
        local list = lists[l]
        if kind.run ~= nil then
          list = {n = 0, args = {}}
          own[l] = list
        end
        list.n = list.n + n_records
        for i = pos + 1, pos + n_args do list.args[#list.args + 1] = argv[i] end
      end
      pos = pos + n_args + 1
    end
    if fresh then fresh_blocks[#fresh_blocks + 1] = own end
    if fresh then
      marks[#marks + 1] = field
      marks[#marks + 1] = last_id
    else
      skipped = skipped + 1
    end
  end
  if argv[pos] ~= nil then fail('ERR_BADARG', 'trailing arguments after the last block') end
  if #marks == 0 then return {0, skipped, ''} end

  local kargs = {}
  for i = 3, 2 + n_header do kargs[#kargs + 1] = argv[i] end
  local kkeys = {}
  for i = 2, #keys do kkeys[#kkeys + 1] = keys[i] end
  local reply
  if kind.run ~= nil then
    reply = kind.run(kkeys, kargs, fresh_blocks)
  else
    for l, counted in ipairs(kind.lists) do
      if counted then kargs[#kargs + 1] = lists[l].n end
      for _, v in ipairs(lists[l].args) do kargs[#kargs + 1] = v end
    end
    reply = kind.fn(kkeys, kargs)
  end
  redis.call('HSET', applied_key, unpack(marks))
  return {#marks / 2, skipped, reply}
end

redis.register_function{function_name = 'ingest_partition', callback = ingest_partition}
redis.register_function{function_name = 'apply_blocks', callback = apply_blocks}
