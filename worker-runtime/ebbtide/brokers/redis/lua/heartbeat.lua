-- Renew the leases of every task a worker holds and publish its heartbeat.
-- ARGV: prefix, lease_ms, worker_id, info_json, worker_ttl_ms, then pairs (queue, entry)
-- Returns the number of leases still held (XX: a lease already reclaimed stays lost).
local lease = tonumber(ARGV[2])
local worker_id, info, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local renewed = 0
for i = 6, #ARGV, 2 do
  renewed = renewed + redis.call('ZADD', k_inflight(ARGV[i]), 'XX', 'CH', now + lease, ARGV[i + 1])
end
if info == '' then
  redis.call('DEL', k_worker(worker_id))
  redis.call('ZREM', K_WORKERS, worker_id)
else
  redis.call('SET', k_worker(worker_id), info, 'PX', ttl)
  redis.call('ZADD', K_WORKERS, now, worker_id)
end
redis.call('ZREMRANGEBYSCORE', K_WORKERS, '-inf', now - ttl)
return renewed
