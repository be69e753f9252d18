"""The Lua the Redis trace store runs: one script per operation, each touching the keys of one slot.

Key layout and semantics are described in ``ark_obs.traces.redis_store``.
"""

from __future__ import annotations

from typing import Final

# One call per batch and shard; KEYS[1] = the shard's in-flight index (it routes the call to the slot
# of every key the script touches, all under the prefix's hash tag on a cluster). ARGV = prefix, ttl_ms,
# cap, pipeline (JSON list), max agents per trace, spans (JSON list of [trace id, agent, start, end, ok,
# seen], or [trace id, agent, t] for the common ok span with start = end = seen). Spans are grouped by
# trace so each trace costs one HMGET and one HSET whatever its number of spans. A span for a
# finalized trace is late, also within a batch. A span of a new agent outside the pipeline for a trace
# that holds max such agents already (field ``a`` counts them) is refused; pipeline agents always fit.
# Times are stored with %.17g, which round-trips a double exactly. Returns {traces completed, spans refused}.
# Each in-flight trace is also in ``w:<agent>``, the sorted set (by last span time) of the first pipeline
# agent it misses, so stalled traces are counted with one ZCOUNT per agent.
_ADD_LUA: Final = """
local prefix = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local pipeline = cjson.decode(ARGV[4])
local max_agents = tonumber(ARGV[5])
local hist_ms = tonumber(ARGV[6])
local spans = cjson.decode(ARGV[7])
local idx, done = prefix .. 'inflight', prefix .. 'done'
local head = {'state', 'n', 'x', 'a'}
local in_pipeline = {}
for j = 1, #pipeline do
  local f = '@' .. pipeline[j]
  head[#head + 1] = f
  in_pipeline[f] = true
end
local order, groups = {}, {}
for _, sp in ipairs(spans) do
  local g = groups[sp[1]]
  if not g then
    g = {}
    groups[sp[1]] = g
    order[#order + 1] = sp[1]
  end
  g[#g + 1] = sp
end
local function first_missing(cur)
  for j = 1, #pipeline do
    if not cur['@' .. pipeline[j]] then return pipeline[j] end
  end
  return nil
end
local function push(lists, name, value)
  local l = lists[name]
  if not l then
    l = {}
    lists[name] = l
  end
  l[#l + 1] = value
end
local late, refused = 0, 0
local finished, unindex, touched = {}, {}, {}
local wait, unwait, hist = {}, {}, {}
for _, id in ipairs(order) do
  local g = groups[id]
  local key = prefix .. 't:' .. id
  local fields = {unpack(head)}
  for _, sp in ipairs(g) do fields[#fields + 1] = '@' .. sp[2] end
  local vals = redis.call('HMGET', key, unpack(fields))
  if vals[1] then
    late = late + #g
  else
    local existed = vals[2]
    local n = tonumber(vals[2]) or 0
    local was_waiting = nil
    local expiry_set_at = tonumber(vals[3])
    local agents = tonumber(vals[4]) or 0
    local cur, missing = {}, #pipeline
    for k = 5, #fields do
      if vals[k] and not cur[fields[k]] then
        cur[fields[k]] = vals[k]
        if in_pipeline[fields[k]] then missing = missing - 1 end
      end
    end
    if existed then was_waiting = first_missing(cur) end
    local changed, set, seen = {}, {}, 0
    for _, sp in ipairs(g) do
      if missing == 0 then
        late = late + 1
      elseif not cur['@' .. sp[2]] and agents >= max_agents and not in_pipeline['@' .. sp[2]] then
        refused = refused + 1
      else
        n = n + 1
        local f = '@' .. sp[2]
        local short = #sp == 3
        local s, e, ok, t = sp[3], sp[3], true, sp[3]
        if not short then e, ok, t = sp[4], sp[5], sp[6] end
        local prev = cur[f]
        local v
        if prev then
          local ps, pe, pq, pok = string.match(prev, '^(%S+) (%S+) (%S+) (%S+)$')
          if s < tonumber(ps) then ps = string.format('%.17g', s) end
          if e > tonumber(pe) then pe = string.format('%.17g', e) end
          if not ok then pok = '0' end
          v = ps .. ' ' .. pe .. ' ' .. pq .. ' ' .. pok
        elseif short then
          local ts = string.format('%.17g', s)
          v = ts .. ' ' .. ts .. ' ' .. n .. ' 1'
          if in_pipeline[f] then missing = missing - 1 else agents = agents + 1 end
        else
          v = string.format('%.17g %.17g %d %s', s, e, n, ok and '1' or '0')
          if in_pipeline[f] then missing = missing - 1 else agents = agents + 1 end
        end
        if not changed[f] then
          changed[f] = true
          set[#set + 1] = f
        end
        cur[f] = v
        if t > seen then seen = t end
      end
    end
    local args = {'n', n, 'a', agents}
    for _, f in ipairs(set) do
      args[#args + 1] = f
      args[#args + 1] = cur[f]
    end
    -- an in-flight key's expiry (2 x ttl) is renewed only every ttl / 2 of span time, not per span:
    -- it still outlives the last span by 1.5 x ttl, so the sweeper reads it at expiry
    local renew = missing ~= 0 and (not expiry_set_at or seen - expiry_set_at > ttl_ms / 2000)
    if missing == 0 then
      args[#args + 1] = 'state'
      args[#args + 1] = 'complete'
    elseif renew then
      args[#args + 1] = 'x'
      args[#args + 1] = string.format('%.17g', seen)
    end
    redis.call('HSET', key, unpack(args))
    if missing == 0 then
      if existed then unindex[#unindex + 1] = id end
      if was_waiting then push(unwait, was_waiting, id) end
      redis.call('PEXPIRE', key, hist_ms)
      finished[#finished + 1] = id
      hist[#hist + 1] = string.format('%.17g', seen)
      hist[#hist + 1] = id
    else
      local score = string.format('%.17g', seen)
      touched[#touched + 1] = score
      touched[#touched + 1] = id
      local waiting = first_missing(cur)
      if was_waiting and was_waiting ~= waiting then push(unwait, was_waiting, id) end
      push(wait, waiting, score)
      push(wait, waiting, id)
      if renew then redis.call('PEXPIRE', key, 2 * ttl_ms) end
    end
  end
end
-- index and list updates batched: one call each per batch rather than per trace
if #unindex > 0 then redis.call('ZREM', idx, unpack(unindex)) end
if #touched > 0 then redis.call('ZADD', idx, unpack(touched)) end
for agent, ids in pairs(unwait) do redis.call('ZREM', prefix .. 'w:' .. agent, unpack(ids)) end
for agent, members in pairs(wait) do
  redis.call('ZADD', prefix .. 'w:' .. agent, unpack(members))
  redis.call('PEXPIRE', prefix .. 'w:' .. agent, 2 * ttl_ms)
end
local completed = #finished
if completed > 0 then
  redis.call('ZADD', prefix .. 'hist', unpack(hist))
  redis.call('PEXPIRE', prefix .. 'hist', 2 * hist_ms)
  redis.call('LPUSH', done, unpack(finished))
  redis.call('LTRIM', done, 0, cap - 1)
  redis.call('PEXPIRE', done, 2 * ttl_ms)
end
if late > 0 then
  redis.call('INCRBY', prefix .. 'late', late)
  redis.call('PEXPIRE', prefix .. 'late', 2 * ttl_ms)
end
local over = redis.call('ZCARD', idx) - cap
if over > 0 then
  local popped = redis.call('ZPOPMIN', idx, over)
  local gone = {}
  for k = 1, #popped, 2 do
    redis.call('DEL', prefix .. 't:' .. popped[k])
    gone[#gone + 1] = popped[k]
  end
  for j = 1, #pipeline do redis.call('ZREM', prefix .. 'w:' .. pipeline[j], unpack(gone)) end
  redis.call('INCRBY', prefix .. 'evicted', over)
  redis.call('PEXPIRE', prefix .. 'evicted', 2 * ttl_ms)
end
redis.call('PEXPIRE', idx, 2 * ttl_ms)
return {completed, refused}
"""

# ARGV = prefix, idle_before (now - ttl; '' = only claim outcomes), ttl_ms, limit, recent_max, pipeline
# (JSON list), history_ms, hist_before (now - history; ''), hist_cap. Finalized traces stay in ``hist``
# (by finalization time) for the history, at most hist_cap per shard (the oldest deleted beyond). The
# sweeper's own TTL decides expiry: the index holds last-span times, not deadlines.
# Claims (so each outcome is counted by one sweeper): expired traces, completed ones, late and evicted counts.
# A completed trace with a failed span ("... 0") goes on the ``failed`` list (newest first, capped).
_SWEEP_LUA: Final = """
local prefix = ARGV[1]
local idle_before = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local recent_max = tonumber(ARGV[5])
local pipeline = cjson.decode(ARGV[6])
local hist_ms = tonumber(ARGV[7])
local hist_before = ARGV[8]
local hist_cap = tonumber(ARGV[9])
local hist = prefix .. 'hist'
local idx = prefix .. 'inflight'
local recent = prefix .. 'recent'
local expired = {}
local lost = 0
if idle_before ~= '' then
  local ids = redis.call('ZRANGEBYSCORE', idx, '-inf', idle_before, 'LIMIT', 0, limit)
  if #ids > 0 then
    for j = 1, #pipeline do redis.call('ZREM', prefix .. 'w:' .. pipeline[j], unpack(ids)) end
  end
  for _, id in ipairs(ids) do
    redis.call('ZREM', idx, id)
    local key = prefix .. 't:' .. id
    local h = redis.call('HGETALL', key)
    if #h > 0 then
      redis.call('HSET', key, 'state', 'incomplete')
      redis.call('PEXPIRE', key, hist_ms)
      redis.call('ZADD', hist, string.format('%.17g', tonumber(idle_before) + ttl_ms / 1000), id)
      redis.call('PEXPIRE', hist, 2 * hist_ms)
      redis.call('LPUSH', recent, id)
      expired[#expired + 1] = id
      expired[#expired + 1] = h
    else
      lost = lost + 1
    end
  end
  if #expired > 0 then
    redis.call('LTRIM', recent, 0, recent_max - 1)
    redis.call('PEXPIRE', recent, ttl_ms)
  end
end
-- finished traces kept for the history (their keys expire by themselves): at most hist_cap per shard
if hist_before ~= '' then
  local aged = redis.call('ZRANGEBYSCORE', hist, '-inf', hist_before, 'LIMIT', 0, limit)
  if #aged > 0 then
    for _, id in ipairs(aged) do redis.call('DEL', prefix .. 't:' .. id) end
    redis.call('ZREM', hist, unpack(aged))
  end
end
local over = redis.call('ZCARD', hist) - hist_cap
if over > 0 then
  local popped = redis.call('ZPOPMIN', hist, over)
  for k = 1, #popped, 2 do redis.call('DEL', prefix .. 't:' .. popped[k]) end
end
local completed = {}
local failed = {}
local ids = redis.call('RPOP', prefix .. 'done', limit)
if ids then
  for _, id in ipairs(ids) do
    local h = redis.call('HGETALL', prefix .. 't:' .. id)
    completed[#completed + 1] = id
    completed[#completed + 1] = h
    for k = 1, #h - 1, 2 do
      if string.sub(h[k], 1, 1) == '@' and string.sub(h[k + 1], -2) == ' 0' then
        failed[#failed + 1] = id
        break
      end
    end
  end
end
if #failed > 0 then
  redis.call('LPUSH', prefix .. 'failed', unpack(failed))
  redis.call('LTRIM', prefix .. 'failed', 0, recent_max - 1)
  redis.call('PEXPIRE', prefix .. 'failed', ttl_ms)
end
local late = redis.call('GETDEL', prefix .. 'late') or '0'
local evicted = redis.call('GETDEL', prefix .. 'evicted') or '0'
return {expired, completed, late, evicted, lost}
"""

# KEYS[1] = hbdown; ARGV = agent, last beat, ttl_ms. 1 if this caller is the one to count the outage.
_CLAIM_OUTAGE_LUA: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
