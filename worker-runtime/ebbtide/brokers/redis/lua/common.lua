-- Shared helpers, prepended to every script by scripts.py (Redis Lua has no `require`).
-- Every key a script touches is declared in KEYS (Redis Cluster requires it): each queue
-- it works on is a block of QK keys (see keys.py QUEUE_PARTS), all with the queue name
-- as their hash tag, so one queue is one slot. The queue names come in ARGV.
--
-- Data model, per queue q, keys P:q:{q}:<part> (see docs/runtime.md):
--   ready:<prio>  LIST  of entries "<ready_ms>|<prio>|<id>", FIFO (RPUSH / LPOP)
--   inflight      ZSET  claim handle "<ready_ms>|<prio>|<token>.<id>" -> lease deadline (ms)
--   claims        HASH  claim handle -> "<started 0|1>|<worker id>"
--   lost          HASH  id -> recoveries (started claims whose worker was lost)
--   delayed       ZSET  "<prio>|<id>" -> due time (ms), for delay= and retries
--   dead          ZSET  "<prio>|<id>" -> time of death (ms)
--   msgs          HASH  id -> JSON payload (one copy, whatever the state)
--   counters      HASH  enqueued, completed, busy_us (cumulative); observed_ms, when a
--                       worker last called on the queue (see observe)
--   alive         ZSET  worker id -> liveness deadline (ms) of the workers that claim
--                       here: past it, their claims in this queue come back
--   epoch         STRING the claim-token counter (one INCR per claiming call)
--   seq           STRING ids for malformed entries kept in the DLQ
--   uniq:<key>    STRING id, with a TTL, while a keyed task is pending
-- The registry P:r:{P}:queues (SET of names), :workers (ZSET id -> last heartbeat ms)
-- and :info (HASH id -> info JSON) is its own slot.
local MAX_PRIO = 9
local QK = 20

-- The queue whose key block starts at KEYS[i].
local function queue_at(i, name)
  local ready = {}
  for p = 0, MAX_PRIO do ready[p] = KEYS[i + p] end
  return {
    name = name, ready = ready, inflight = KEYS[i + 10], claims = KEYS[i + 11],
    lost = KEYS[i + 12], delayed = KEYS[i + 13], dead = KEYS[i + 14], msgs = KEYS[i + 15],
    counters = KEYS[i + 16], alive = KEYS[i + 17], epoch = KEYS[i + 18], seq = KEYS[i + 19],
  }
end

-- ARGV[a] = number of queue blocks, then their names: the queues, in KEYS order; returns
-- them and the index of the next ARGV.
local function read_queues(a)
  local nb = tonumber(ARGV[a])
  local qs = {}
  for b = 1, nb do qs[b] = queue_at((b - 1) * QK + 1, ARGV[a + b]) end
  return qs, a + nb + 1
end

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
-- unique per claim in its queue, is what fences a stale worker out). A handle without a
-- token (left in flight by an older worker) parses as a plain entry.
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
local function promote_due(Q, now, limit)
  local due = redis.call('ZRANGEBYSCORE', Q.delayed, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    redis.call('ZREM', Q.delayed, member)
    local p, id = split_member(member)
    if p then
      redis.call('RPUSH', Q.ready[tonumber(p)], fmt(now) .. '|' .. p .. '|' .. id)
    end
  end
end

-- An accepted task whose payload is gone (evicted, or deleted behind Ebbtide's back)
-- cannot run, but it must not vanish either: it is buried with the reason.
local function bury_missing(Q, p, id, now)
  redis.call('HSET', Q.msgs, id, cjson.encode({
    id = id, error = 'payload evicted: the task payload is missing from Redis'}))
  redis.call('ZADD', Q.dead, now, p .. '|' .. id)
  redis.call('HINCRBY', Q.counters, 'completed', 1)
end

-- Forget a claim's record (it was settled or lost); true when its task had started.
local function drop_claim(Q, handle)
  local rec = redis.call('HGET', Q.claims, handle)
  if not rec then return false end
  redis.call('HDEL', Q.claims, handle)
  return string.sub(rec, 1, 1) == '1'
end

-- A claim whose worker was lost (lease expired, or its liveness ran out): the task goes
-- back to the head of its list. A started task counts one recovery (the poison limit,
-- checked by the worker that claims it next); a prefetched, never started one does not.
local function recover(Q, handle, now)
  if redis.call('ZREM', Q.inflight, handle) ~= 1 then return end
  local started = drop_claim(Q, handle)
  local ready, p, id = split_handle(handle)
  if not p then return end
  if redis.call('HEXISTS', Q.msgs, id) == 0 then
    bury_missing(Q, p, id, now)
    return
  end
  if started then redis.call('HINCRBY', Q.lost, id, 1) end
  redis.call('LPUSH', Q.ready[tonumber(p)], fmt(ready) .. '|' .. p .. '|' .. id)
end

-- Leases nobody renewed (a dead or frozen worker) come back.
local function reclaim_expired(Q, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', Q.inflight, '-inf', now, 'LIMIT', 0, limit)
  for _, handle in ipairs(expired) do recover(Q, handle, now) end
end

-- Liveness counts only time in which workers were heard from. Each worker's claim and
-- heartbeat on a queue records when it came. A call that finds none for more than half
-- its liveness window means that every worker of the queue, or the broker itself, was
-- stalled (a starved node, a paused VM) or that all of them are gone: every deadline
-- moves on by the gap. A worker the stall kept from its heartbeat is then not taken for
-- dead, and its running tasks do not run twice; one that had died before the gap is
-- still past its deadline, and one that died in it is noticed one window later.
local function observe(Q, now, alive)
  if alive <= 0 then return end
  local seen = tonumber(redis.call('HGET', Q.counters, 'observed_ms'))
  if seen and now - seen > alive / 2 then
    local gap = now - seen
    local entries = redis.call('ZRANGE', Q.alive, 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      redis.call('ZADD', Q.alive, tonumber(entries[i + 1]) + gap, entries[i])
    end
  end
  redis.call('HSET', Q.counters, 'observed_ms', now)
end

-- Workers whose liveness in this queue ran out (no heartbeat for a few seconds): every
-- claim they hold here comes back now, long before its lease would run out. Rare, so a
-- scan is fine. Each worker keeps its liveness in every queue it claims from.
local function reclaim_dead_workers(Q, now)
  local dead = redis.call('ZRANGEBYSCORE', Q.alive, '-inf', now, 'LIMIT', 0, 20)
  if #dead == 0 then return end
  local gone = {}
  for _, w in ipairs(dead) do
    gone[w] = true
    redis.call('ZREM', Q.alive, w)
  end
  local claims = redis.call('HGETALL', Q.claims)
  for i = 1, #claims, 2 do
    if gone[string.sub(claims[i + 1], 3)] then recover(Q, claims[i], now) end
  end
end

local function release_key(ukey, id)
  if ukey and redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
end

-- The task's life ended (acked or dead): its recovery count goes with it.
local function finished(Q, id)
  redis.call('HDEL', Q.lost, id)
end

local function apply_one(st, op, Q, handle, payload, delay, ukey)
  if redis.call('ZREM', Q.inflight, handle) ~= 1 then return end  -- fenced: not ours
  st.settled = st.settled + 1
  drop_claim(Q, handle)
  local ready, p, id = split_handle(handle)
  if op == 'ack' then
    redis.call('HDEL', Q.msgs, id)
    redis.call('HINCRBY', Q.counters, 'completed', 1)
    finished(Q, id)
    release_key(ukey, id)
  elseif op == 'retry' or op == 'postpone' then
    if payload ~= '' then redis.call('HSET', Q.msgs, id, payload) end
    redis.call('ZADD', Q.delayed, st.now + delay, p .. '|' .. id)
  elseif op == 'dead' then
    if payload ~= '' then redis.call('HSET', Q.msgs, id, payload) end
    redis.call('ZADD', Q.dead, st.now, p .. '|' .. id)
    redis.call('HINCRBY', Q.counters, 'completed', 1)
    finished(Q, id)
    release_key(ukey, id)
    if not st.trimmed[Q.name] then
      st.trimmed[Q.name] = true
      local old = redis.call('ZRANGEBYSCORE', Q.dead, '-inf', st.now - st.dead_ttl, 'LIMIT', 0, 1000)
      for _, member in ipairs(old) do
        local _, old_id = split_member(member)
        if old_id then redis.call('HDEL', Q.msgs, old_id) end
        redis.call('ZREM', Q.dead, member)
      end
    end
  elseif op == 'requeue' then
    -- A graceful hand-back: the plain entry, its recovery count untouched.
    redis.call('LPUSH', Q.ready[tonumber(p)], fmt(ready) .. '|' .. p .. '|' .. id)
  end
end

-- Apply settle records from ARGV[i] to the end; a record names its queue by block number:
--   'A', block, busy_us, n, handle * n        plain acks (the hot path: one arg per task)
--   'X', op, block, handle, payload ('' = unchanged), delay_ms, busy_us, unique key's
--        index in KEYS (0 = none)
local function settle_records(qs, i, dead_ttl, now)
  local st = {settled = 0, trimmed = {}, dead_ttl = dead_ttl, now = now}
  while i <= #ARGV do
    if ARGV[i] == 'A' then
      local Q, busy, n = qs[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
      if busy > 0 then redis.call('HINCRBY', Q.counters, 'busy_us', busy) end
      local done = 0
      for j = i + 4, i + 3 + n do
        if redis.call('ZREM', Q.inflight, ARGV[j]) == 1 then
          local _, _, id = split_handle(ARGV[j])
          redis.call('HDEL', Q.claims, ARGV[j])
          redis.call('HDEL', Q.msgs, id)
          finished(Q, id)
          done = done + 1
        end
      end
      if done > 0 then
        redis.call('HINCRBY', Q.counters, 'completed', done)
        st.settled = st.settled + done
      end
      i = i + 4 + n
    else
      local Q, busy = qs[tonumber(ARGV[i + 2])], tonumber(ARGV[i + 6])
      if busy > 0 then redis.call('HINCRBY', Q.counters, 'busy_us', busy) end
      local ui = tonumber(ARGV[i + 7])
      local ukey = nil
      if ui > 0 then ukey = KEYS[ui] end
      apply_one(st, ARGV[i + 1], Q, ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]), ukey)
      i = i + 8
    end
  end
  return st.settled
end

-- Claim up to n ready tasks, highest priority first: pass 1 takes up to each queue's
-- quota, pass 2 fills what is left in order (plan: list of {queue, quota}). Each claim
-- gets a handle with a fresh token of its queue and a record of its worker; the first
-- `run_now` are marked started (they go straight to an idle slot), the rest are
-- prefetched until the worker's heartbeat says otherwise.
-- Returns one string framing every claimed task as
-- "<queue>\n<handle>\n<recoveries>\n<payload length>\n<payload>": one bulk reply is
-- parsed far faster by the client than several per task.
local function claim_framed(plan, n, now, deadline, worker, run_now, alive, held)
  local out = {}
  -- A task a worker was lost with (a recovery counted) runs alone: it is claimed only by
  -- a worker that holds nothing, as the only task of its claim, and the worker claims
  -- nothing more until it is settled (worker/decisions.holds_lost). Otherwise the tasks
  -- beside a task that kills its worker would be lost, and counted, with it each time.
  -- Claiming stops at such a task while the worker holds anything: the worker drains,
  -- then takes it.
  local halt = false
  for _, step in ipairs(plan) do
    local Q = step[1]
    -- A claim is a sign of life too: a worker that dies before its first heartbeat is
    -- still noticed by its liveness, not its lease. Renewed before the reclaim, so a
    -- worker back from a stall of its own never takes back the tasks it is running.
    if worker ~= '' and alive > 0 then
      observe(Q, now, alive)
      redis.call('ZADD', Q.alive, now + alive, worker)
    end
    reclaim_dead_workers(Q, now)
    promote_due(Q, now, 500)
    reclaim_expired(Q, now, 500)
  end
  local got = 0
  local tokens = {}
  local function take(Q, want)
    for p = MAX_PRIO, 0, -1 do
      if want <= 0 then return end
      if halt then return end
      local key = Q.ready[p]
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
            local dead_id = 'malformed-' .. fmt(now) .. '-' .. redis.call('INCR', Q.seq)
            redis.call('HSET', Q.msgs, dead_id,
              cjson.encode({error = 'malformed queue entry', raw = entry}))
            redis.call('ZADD', Q.dead, now, '0|' .. dead_id)
          else
            local payload = redis.call('HGET', Q.msgs, id)
            local lost = redis.call('HGET', Q.lost, id) or '0'
            if payload and tonumber(lost) > 0 then
              halt = true
              if got > 0 or held > 0 then
                for k = #entries, j, -1 do redis.call('LPUSH', key, entries[k]) end
                return
              end
            end
            if not payload then
              bury_missing(Q, ep, id, now)
            else
              local token = tokens[Q.name]
              if not token then
                token = redis.call('INCR', Q.epoch)
                tokens[Q.name] = token
              end
              local handle = fmt(ready) .. '|' .. ep .. '|' .. fmt(token) .. '.' .. id
              redis.call('ZADD', Q.inflight, deadline, handle)
              local started = (got < run_now) and '1|' or '0|'
              redis.call('HSET', Q.claims, handle, started .. worker)
              out[#out + 1] = Q.name .. '\n' .. handle .. '\n' .. lost .. '\n' .. #payload .. '\n' .. payload
              want = want - 1
              got = got + 1
            end
          end
        end
      end
    end
  end

  for _, step in ipairs(plan) do
    if got >= n or halt then break end
    if step[2] > 0 then take(step[1], math.min(step[2], n - got)) end
  end
  for _, step in ipairs(plan) do
    if got >= n or halt then break end
    take(step[1], n - got)
  end
  return table.concat(out), halt
end

-- The worker's calls (claim, settle, exchange) share one argument layout:
-- ARGV: dead_ttl_ms, lease_ms, n, worker_id, run_now, alive_ms, held, nb, nb queue
-- names (KEYS blocks in order), np, np pairs (block, quota), then settle records.
-- n = 0 claims nothing (with a plan, it still reclaims and promotes in its queues). held: how many tasks the worker holds once this batch is settled
-- (a lost task is claimed only by a worker holding nothing, see claim_framed).
-- Returns {settled, framed deliveries, halted 0|1}: settled counts the records that
-- applied (the others were fenced out: no longer this worker's claim); halted: claiming
-- stopped at a lost task (the worker must drain before claiming elsewhere).
local function work()
  local dead_ttl, lease, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
  local worker, run_now, alive = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  local held = tonumber(ARGV[7])
  local qs, a = read_queues(8)
  local np = tonumber(ARGV[a])
  local plan = {}
  for i = a + 1, a + 2 * np, 2 do
    plan[#plan + 1] = {qs[tonumber(ARGV[i])], tonumber(ARGV[i + 1])}
  end
  local now = now_ms()
  local settled = settle_records(qs, a + 1 + 2 * np, dead_ttl, now)
  if n > 0 or np > 0 then  -- n = 0 with a plan: only the upkeep (reclaim, promote)
    local framed, halt = claim_framed(plan, n, now, now + lease, worker, run_now, alive, held)
    return {settled, framed, halt and 1 or 0}
  end
  return {settled, '', 0}
end
