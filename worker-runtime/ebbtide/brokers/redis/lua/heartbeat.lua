-- Renew the leases of every task a worker holds, mark the ones now running as started,
-- keep the worker alive and publish its heartbeat.
-- ARGV: prefix, lease_ms, worker_id, info_json ('' = stopping), worker_ttl_ms, alive_ms,
--       then triples (queue, handle, running 0|1)
-- Returns the handles this worker no longer holds (reclaimed meanwhile: fenced out; the
-- worker stops those tasks where it can).
local lease = tonumber(ARGV[2])
local worker_id, info, ttl, alive = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local lost = {}
for i = 7, #ARGV, 3 do
  local q, handle = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', k_inflight(q), handle) then
    redis.call('ZADD', k_inflight(q), 'XX', now + lease, handle)
    if ARGV[i + 2] == '1' then redis.call('HSET', k_claims(q), handle, '1|' .. worker_id) end
  else
    lost[#lost + 1] = handle
  end
end
if info == '' then
  redis.call('DEL', k_worker(worker_id))
  redis.call('ZREM', K_WORKERS, worker_id)
  -- Stopping: whatever it still holds (nothing, normally) comes back at the next claim.
  redis.call('ZADD', K_ALIVE, now, worker_id)
else
  redis.call('SET', k_worker(worker_id), info, 'PX', ttl)
  redis.call('ZADD', K_WORKERS, now, worker_id)
  redis.call('ZADD', K_ALIVE, now + alive, worker_id)
end
redis.call('ZREMRANGEBYSCORE', K_WORKERS, '-inf', now - ttl)
return lost
