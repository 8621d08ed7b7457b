-- Everything the operator scales from, for the queues of one slot, in one round trip
-- (read-only: run with EVAL_RO).
-- KEYS: the queue blocks, then, when reading the registry, its workers and info keys.
-- ARGV: worker_ttl_ms, registry (0|1), nb, nb queue names
-- Returns {{sec, usec}, {queue rows...}, {worker info json...}} where a queue row is
-- {name, {ready per prio 0..9}, oldest_ready_ms (-1 = none), inflight, delayed, dead,
--  enqueued, completed, busy_us, due, next_due_ms (-1 = none)}
local ttl = tonumber(ARGV[1])
local registry = ARGV[2] == '1'
local qs = read_queues(3)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local rows = {}
for _, Q in ipairs(qs) do
  local ready = {}
  local oldest = -1
  for p = 0, MAX_PRIO do
    local n = redis.call('LLEN', Q.ready[p])
    ready[#ready + 1] = n
    if n > 0 then
      local head = redis.call('LINDEX', Q.ready[p], 0)
      local ready_ms = head and split_entry(head)
      if ready_ms and (oldest < 0 or ready_ms < oldest) then oldest = ready_ms end
    end
  end
  -- Delayed tasks already due wait for a claim to promote them: the operator must count
  -- them as backlog (and wake a worker for the next one), even at zero replicas.
  local due = redis.call('ZCOUNT', Q.delayed, '-inf', now)
  local first = redis.call('ZRANGE', Q.delayed, 0, 0, 'WITHSCORES')
  local next_due = first[2] and tonumber(first[2]) or -1
  local c = redis.call('HMGET', Q.counters, 'enqueued', 'completed', 'busy_us')
  rows[#rows + 1] = {
    Q.name, ready, oldest,
    redis.call('ZCARD', Q.inflight),
    redis.call('ZCARD', Q.delayed),
    redis.call('ZCARD', Q.dead),
    tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0,
    due, next_due,
  }
end

local workers = {}
if registry then
  local wkey, ikey = KEYS[#qs * QK + 1], KEYS[#qs * QK + 2]
  local ids = redis.call('ZRANGEBYSCORE', wkey, now - ttl, '+inf')
  if #ids > 0 then
    for _, info in ipairs(redis.call('HMGET', ikey, unpack(ids))) do
      if info then workers[#workers + 1] = info end
    end
  end
end
return {t, rows, workers}
