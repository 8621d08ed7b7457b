-- Everything the operator scales from, in one round trip.
-- ARGV: prefix, worker_ttl_ms, then queue names (none = every known queue)
-- Returns {{sec, usec}, {queue rows...}, {worker info json...}} where a queue row is
-- {name, {ready per prio 0..9}, oldest_ready_ms (-1 = none), inflight, delayed, dead,
--  enqueued, completed, busy_us, due, next_due_ms (-1 = none)}
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local queues = {}
if #ARGV > 2 then
  for i = 3, #ARGV do queues[#queues + 1] = ARGV[i] end
else
  queues = redis.call('SMEMBERS', K_QUEUES)
  table.sort(queues)
end

local rows = {}
for _, q in ipairs(queues) do
  local ready = {}
  local oldest = -1
  for p = 0, MAX_PRIO do
    local n = redis.call('LLEN', k_ready(q, p))
    ready[#ready + 1] = n
    if n > 0 then
      local head = redis.call('LINDEX', k_ready(q, p), 0)
      local ready_ms = head and split_entry(head)
      if ready_ms and (oldest < 0 or ready_ms < oldest) then oldest = ready_ms end
    end
  end
  -- Delayed tasks already due wait for a claim to promote them: the operator must count
  -- them as backlog (and wake a worker for the next one), even at zero replicas.
  local due = redis.call('ZCOUNT', k_delayed(q), '-inf', now)
  local first = redis.call('ZRANGE', k_delayed(q), 0, 0, 'WITHSCORES')
  local next_due = first[2] and tonumber(first[2]) or -1
  local c = redis.call('HMGET', k_counters(q), 'enqueued', 'completed', 'busy_us')
  rows[#rows + 1] = {
    q, ready, oldest,
    redis.call('ZCARD', k_inflight(q)),
    redis.call('ZCARD', k_delayed(q)),
    redis.call('ZCARD', k_dead(q)),
    tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0,
    due, next_due,
  }
end

local workers = {}
local ids = redis.call('ZRANGEBYSCORE', K_WORKERS, now - ttl, '+inf')
for _, id in ipairs(ids) do
  local info = redis.call('GET', k_worker(id))
  if info then workers[#workers + 1] = info end
end
return {t, rows, workers}
