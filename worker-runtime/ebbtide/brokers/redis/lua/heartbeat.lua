-- Renew the leases of every task a worker holds in the queues of one slot, mark the
-- ones now running as started, keep the worker alive in each of these queues, and (with
-- the registry's keys) publish its heartbeat.
-- KEYS: the queue blocks, then, when registering, the registry's workers and info keys.
-- ARGV: lease_ms, worker_id, info_json ('' = stopping), worker_ttl_ms, alive_ms,
--       sweep (1 = a claim reply of this worker was lost: claims recorded for it that it
--       does not hold go back to ready now, uncounted), register (0|1), nb, nb queue
--       names, then triples (block, handle, running 0|1)
-- Returns the handles this worker no longer holds (reclaimed meanwhile: fenced out; the
-- worker stops those tasks where it can).
local lease = tonumber(ARGV[1])
local worker_id, info, ttl, alive = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local sweep, register = ARGV[6] == '1', ARGV[7] == '1'
local qs, a = read_queues(8)
local now = now_ms()
local lost = {}
local held = {}
for i = a, #ARGV, 3 do
  local Q, handle = qs[tonumber(ARGV[i])], ARGV[i + 1]
  held[handle] = true
  if redis.call('ZSCORE', Q.inflight, handle) then
    redis.call('ZADD', Q.inflight, 'XX', now + lease, handle)
    if ARGV[i + 2] == '1' then redis.call('HSET', Q.claims, handle, '1|' .. worker_id) end
  else
    lost[#lost + 1] = handle
  end
end
for _, Q in ipairs(qs) do
  if sweep then
    local claims = redis.call('HGETALL', Q.claims)
    for i = 1, #claims, 2 do
      if not held[claims[i]] and string.sub(claims[i + 1], 3) == worker_id then
        -- Claimed, but the reply never reached the worker: it never ran, so it goes
        -- back without counting a recovery.
        redis.call('HSET', Q.claims, claims[i], '0|' .. worker_id)
        recover(Q, claims[i], now)
      end
    end
  end
  observe(Q, now, alive)
  -- Stopping: whatever it still holds (nothing, normally) comes back at the next claim.
  redis.call('ZADD', Q.alive, info == '' and now or now + alive, worker_id)
end
if register then
  local workers, infos = KEYS[#qs * QK + 1], KEYS[#qs * QK + 2]
  if info == '' then
    redis.call('HDEL', infos, worker_id)
    redis.call('ZREM', workers, worker_id)
  else
    redis.call('HSET', infos, worker_id, info)
    redis.call('ZADD', workers, now, worker_id)
  end
  local gone = redis.call('ZRANGEBYSCORE', workers, '-inf', now - ttl, 'LIMIT', 0, 100)
  for _, id in ipairs(gone) do
    redis.call('HDEL', infos, id)
    redis.call('ZREM', workers, id)
  end
end
return lost
