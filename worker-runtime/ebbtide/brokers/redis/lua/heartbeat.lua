-- Renew the leases of every task a worker holds, mark the ones now running as started,
-- keep the worker alive and publish its heartbeat.
-- ARGV: prefix, lease_ms, worker_id, info_json ('' = stopping), worker_ttl_ms, alive_ms,
--       sweep (1 = a claim reply of this worker was lost: claims recorded for it that it
--       does not hold go back to ready now, uncounted), then triples (queue, handle,
--       running 0|1)
-- Returns the handles this worker no longer holds (reclaimed meanwhile: fenced out; the
-- worker stops those tasks where it can).
local lease = tonumber(ARGV[2])
local worker_id, info, ttl, alive = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local sweep = ARGV[7] == '1'
local now = now_ms()
local lost = {}
local held = {}
for i = 8, #ARGV, 3 do
  local q, handle = ARGV[i], ARGV[i + 1]
  held[handle] = true
  if redis.call('ZSCORE', k_inflight(q), handle) then
    redis.call('ZADD', k_inflight(q), 'XX', now + lease, handle)
    if ARGV[i + 2] == '1' then redis.call('HSET', k_claims(q), handle, '1|' .. worker_id) end
  else
    lost[#lost + 1] = handle
  end
end
if sweep then
  for _, q in ipairs(redis.call('SMEMBERS', K_QUEUES)) do
    local claims = redis.call('HGETALL', k_claims(q))
    for i = 1, #claims, 2 do
      if not held[claims[i]] and string.sub(claims[i + 1], 3) == worker_id then
        -- Claimed, but the reply never reached the worker: it never ran, so it goes
        -- back without counting a recovery.
        redis.call('HSET', k_claims(q), claims[i], '0|' .. worker_id)
        recover(q, claims[i], now)
      end
    end
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
