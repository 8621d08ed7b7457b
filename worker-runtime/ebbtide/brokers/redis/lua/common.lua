-- Shared helpers, prepended to every script by scripts.py (Redis Lua has no `require`).
-- ARGV[1] is always the key prefix, so several apps can share one Redis.
--
-- Data model, per queue q (see docs/runtime.md):
--   P:q:q:ready:<prio>  LIST  of entries "<ready_ms>|<prio>|<id>", FIFO (RPUSH / LPOP)
--   P:q:q:inflight      ZSET  claim handle "<ready_ms>|<prio>|<token>.<id>" -> lease deadline (ms)
--   P:q:q:claims        HASH  claim handle -> "<started 0|1>|<worker id>"
--   P:q:q:lost          HASH  id -> recoveries (started claims whose worker was lost)
--   P:q:q:delayed       ZSET  "<prio>|<id>" -> due time (ms), for delay= and retries
--   P:q:q:dead          ZSET  "<prio>|<id>" -> time of death (ms)
--   P:q:q:msgs          HASH  id -> JSON payload (one copy, whatever the state)
--   P:q:q:counters      HASH  enqueued, completed, busy_us (cumulative)
--   P:q:q:uniq:<key>    STRING id, with a TTL, while a keyed task is pending
--   P:queues            SET   of known queue names
--   P:workers           ZSET  worker id -> last heartbeat (ms); P:worker:<id> its info
--   P:alive             ZSET  worker id -> liveness deadline (ms): past it, its claims come back
--   P:epoch             STRING the claim-token counter (one INCR per claiming call)
local P = ARGV[1]
local MAX_PRIO = 9

local function k_ready(q, p) return P .. ':q:' .. q .. ':ready:' .. p end
local function k_inflight(q) return P .. ':q:' .. q .. ':inflight' end
local function k_delayed(q) return P .. ':q:' .. q .. ':delayed' end
local function k_dead(q) return P .. ':q:' .. q .. ':dead' end
local function k_msgs(q) return P .. ':q:' .. q .. ':msgs' end
local function k_counters(q) return P .. ':q:' .. q .. ':counters' end
local function k_claims(q) return P .. ':q:' .. q .. ':claims' end
local function k_lost(q) return P .. ':q:' .. q .. ':lost' end
local function k_uniq(q, key) return P .. ':q:' .. q .. ':uniq:' .. key end
local K_QUEUES = P .. ':queues'
local K_WORKERS = P .. ':workers'
local K_ALIVE = P .. ':alive'
local K_EPOCH = P .. ':epoch'
local function k_worker(id) return P .. ':worker:' .. id end

-- Broker clock in integer milliseconds, so every worker agrees on deadlines.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(n) return string.format('%d', n) end

-- "<ready_ms>|<prio>|<id>" -> ready_ms, prio, id  (nil when malformed)
local function split_entry(entry)
  local ready, p, id = string.match(entry, '^(%d+)|(%d)|(.+)$')
  return tonumber(ready), p, id
end

-- A claim handle "<ready_ms>|<prio>|<token>.<id>" -> ready_ms, prio, id (the token,
-- unique per claim, is what fences a stale worker out). A handle without a token (left
-- in flight by an older worker) parses as a plain entry.
local function split_handle(handle)
  local ready, p, id = string.match(handle, '^(%d+)|(%d)|%d+%.(.+)$')
  if ready then return tonumber(ready), p, id end
  return split_entry(handle)
end

-- "<prio>|<id>" -> prio, id
local function split_member(member)
  return string.match(member, '^(%d)|(.+)$')
end

-- Delayed and retrying tasks whose time has come become ready (any worker does this).
local function promote_due(q, now, limit)
  local due = redis.call('ZRANGEBYSCORE', k_delayed(q), '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    redis.call('ZREM', k_delayed(q), member)
    local p, id = split_member(member)
    if p then
      redis.call('RPUSH', k_ready(q, p), fmt(now) .. '|' .. p .. '|' .. id)
    end
  end
end

-- An accepted task whose payload is gone (evicted, or deleted behind Ebbtide's back)
-- cannot run, but it must not vanish either: it is buried with the reason.
local function bury_missing(q, p, id, now)
  redis.call('HSET', k_msgs(q), id, cjson.encode({
    id = id, error = 'payload evicted: the task payload is missing from Redis'}))
  redis.call('ZADD', k_dead(q), now, p .. '|' .. id)
  redis.call('HINCRBY', k_counters(q), 'completed', 1)
end

-- Forget a claim's record (it was settled or lost); true when its task had started.
local function drop_claim(q, handle)
  local rec = redis.call('HGET', k_claims(q), handle)
  if not rec then return false end
  redis.call('HDEL', k_claims(q), handle)
  return string.sub(rec, 1, 1) == '1'
end

-- A claim whose worker was lost (lease expired, or its liveness ran out): the task goes
-- back to the head of its list. A started task counts one recovery (the poison limit,
-- checked by the worker that claims it next); a prefetched, never started one does not.
local function recover(q, handle, now)
  if redis.call('ZREM', k_inflight(q), handle) ~= 1 then return end
  local started = drop_claim(q, handle)
  local ready, p, id = split_handle(handle)
  if not p then return end
  if redis.call('HEXISTS', k_msgs(q), id) == 0 then
    bury_missing(q, p, id, now)
    return
  end
  if started then redis.call('HINCRBY', k_lost(q), id, 1) end
  redis.call('LPUSH', k_ready(q, p), fmt(ready) .. '|' .. p .. '|' .. id)
end

-- Leases nobody renewed (a dead or frozen worker) come back.
local function reclaim_expired(q, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', k_inflight(q), '-inf', now, 'LIMIT', 0, limit)
  for _, handle in ipairs(expired) do recover(q, handle, now) end
end

-- Workers whose liveness ran out (no heartbeat for a few seconds): every claim they
-- hold comes back now, long before its lease would run out. Rare, so a scan is fine.
local function reclaim_dead_workers(now)
  local dead = redis.call('ZRANGEBYSCORE', K_ALIVE, '-inf', now, 'LIMIT', 0, 20)
  if #dead == 0 then return end
  local gone = {}
  for _, w in ipairs(dead) do
    gone[w] = true
    redis.call('ZREM', K_ALIVE, w)
  end
  for _, q in ipairs(redis.call('SMEMBERS', K_QUEUES)) do
    local claims = redis.call('HGETALL', k_claims(q))
    for i = 1, #claims, 2 do
      if gone[string.sub(claims[i + 1], 3)] then recover(q, claims[i], now) end
    end
  end
end

local function release_key(q, key, id)
  if key ~= '' and redis.call('GET', k_uniq(q, key)) == id then
    redis.call('DEL', k_uniq(q, key))
  end
end

-- The task's life ended (acked or dead): its recovery count goes with it.
local function finished(q, id)
  redis.call('HDEL', k_lost(q), id)
end

local function apply_one(st, op, q, handle, payload, delay, key)
  if redis.call('ZREM', k_inflight(q), handle) ~= 1 then return end  -- fenced: not ours
  st.settled = st.settled + 1
  drop_claim(q, handle)
  local ready, p, id = split_handle(handle)
  if op == 'ack' then
    redis.call('HDEL', k_msgs(q), id)
    redis.call('HINCRBY', k_counters(q), 'completed', 1)
    finished(q, id)
    release_key(q, key, id)
  elseif op == 'retry' or op == 'postpone' then
    if payload ~= '' then redis.call('HSET', k_msgs(q), id, payload) end
    redis.call('ZADD', k_delayed(q), st.now + delay, p .. '|' .. id)
  elseif op == 'dead' then
    if payload ~= '' then redis.call('HSET', k_msgs(q), id, payload) end
    redis.call('ZADD', k_dead(q), st.now, p .. '|' .. id)
    redis.call('HINCRBY', k_counters(q), 'completed', 1)
    finished(q, id)
    release_key(q, key, id)
    if not st.trimmed[q] then
      st.trimmed[q] = true
      local old = redis.call('ZRANGEBYSCORE', k_dead(q), '-inf', st.now - st.dead_ttl, 'LIMIT', 0, 1000)
      for _, member in ipairs(old) do
        local _, old_id = split_member(member)
        if old_id then redis.call('HDEL', k_msgs(q), old_id) end
        redis.call('ZREM', k_dead(q), member)
      end
    end
  elseif op == 'requeue' then
    -- A graceful hand-back: the plain entry, its recovery count untouched.
    redis.call('LPUSH', k_ready(q, p), fmt(ready) .. '|' .. p .. '|' .. id)
  end
end

-- Apply settle records from ARGV[i] to the end (see settle.lua for the format).
local function settle_records(i, dead_ttl, now)
  local st = {settled = 0, trimmed = {}, dead_ttl = dead_ttl, now = now}
  while i <= #ARGV do
    if ARGV[i] == 'A' then
      local q, busy, n = ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
      if busy > 0 then redis.call('HINCRBY', k_counters(q), 'busy_us', busy) end
      local done = 0
      for j = i + 4, i + 3 + n do
        if redis.call('ZREM', k_inflight(q), ARGV[j]) == 1 then
          local _, _, id = split_handle(ARGV[j])
          redis.call('HDEL', k_claims(q), ARGV[j])
          redis.call('HDEL', k_msgs(q), id)
          finished(q, id)
          done = done + 1
        end
      end
      if done > 0 then
        redis.call('HINCRBY', k_counters(q), 'completed', done)
        st.settled = st.settled + done
      end
      i = i + 4 + n
    else
      local q, busy = ARGV[i + 2], tonumber(ARGV[i + 6])
      if busy > 0 then redis.call('HINCRBY', k_counters(q), 'busy_us', busy) end
      apply_one(st, ARGV[i + 1], q, ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]), ARGV[i + 7])
      i = i + 8
    end
  end
  return st.settled
end

-- Claim up to n ready tasks, highest priority first: pass 1 takes up to each queue's
-- quota, pass 2 fills what is left in order. Each claim gets a handle with a fresh token
-- and a record of its worker; the first `run_now` are marked started (they go straight
-- to an idle slot), the rest are prefetched until the worker's heartbeat says otherwise.
-- Returns one string framing every claimed task as
-- "<queue>\n<handle>\n<recoveries>\n<payload length>\n<payload>": one bulk reply is
-- parsed far faster by the client than several per task.
local function claim_framed(queues, quotas, n, now, deadline, worker, run_now, alive, held)
  local out = {}
  -- A task a worker was lost with (a recovery counted) runs alone: it is claimed only by
  -- a worker that holds nothing, as the only task of its claim, and the worker claims
  -- nothing more until it is settled (worker/decisions.holds_lost). Otherwise the tasks
  -- beside a task that kills its worker would be lost, and counted, with it each time.
  -- Claiming stops at such a task while the worker holds anything: the worker drains,
  -- then takes it.
  local halt = false
  reclaim_dead_workers(now)
  -- A claim is a sign of life too: a worker that dies before its first heartbeat is
  -- still noticed by its liveness, not its lease.
  if worker ~= '' and alive > 0 then redis.call('ZADD', K_ALIVE, now + alive, worker) end
  for _, q in ipairs(queues) do
    promote_due(q, now, 500)
    reclaim_expired(q, now, 500)
  end
  local got = 0
  local token = nil
  local function take(q, want)
    for p = MAX_PRIO, 0, -1 do
      if want <= 0 then return end
      if halt then return end
      local key = k_ready(q, p)
      local entries = redis.call('LPOP', key, want)
      if entries then
        for j, entry in ipairs(entries) do
          if halt then
            -- what was popped after the lost task goes back, in order, to the head
            for k = #entries, j, -1 do redis.call('LPUSH', key, entries[k]) end
            return
          end
          local ready, ep, id = split_entry(entry)
          if not ep then
            -- A malformed entry cannot be run: keep it, with the reason, in the DLQ.
            local dead_id = 'malformed-' .. fmt(now) .. '-' .. redis.call('INCR', P .. ':seq')
            redis.call('HSET', k_msgs(q), dead_id,
              cjson.encode({error = 'malformed queue entry', raw = entry}))
            redis.call('ZADD', k_dead(q), now, '0|' .. dead_id)
          else
            local payload = redis.call('HGET', k_msgs(q), id)
            local lost = redis.call('HGET', k_lost(q), id) or '0'
            if payload and tonumber(lost) > 0 then
              halt = true
              if got > 0 or held > 0 then
                for k = #entries, j, -1 do redis.call('LPUSH', key, entries[k]) end
                return
              end
            end
            if not payload then
              bury_missing(q, ep, id, now)
            else
              token = token or redis.call('INCR', K_EPOCH)
              local handle = fmt(ready) .. '|' .. ep .. '|' .. fmt(token) .. '.' .. id
              redis.call('ZADD', k_inflight(q), deadline, handle)
              local started = (got < run_now) and '1|' or '0|'
              redis.call('HSET', k_claims(q), handle, started .. worker)
              out[#out + 1] = q .. '\n' .. handle .. '\n' .. lost .. '\n' .. #payload .. '\n' .. payload
              want = want - 1
              got = got + 1
            end
          end
        end
      end
    end
  end

  for i, q in ipairs(queues) do
    if got >= n or halt then break end
    if quotas[i] > 0 then take(q, math.min(quotas[i], n - got)) end
  end
  for _, q in ipairs(queues) do
    if got >= n or halt then break end
    take(q, n - got)
  end
  return table.concat(out)
end
