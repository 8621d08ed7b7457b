-- Settle a batch and claim the slots it frees, in one round trip (the worker's hot path).
-- ARGV: prefix, dead_ttl_ms, lease_ms, n, worker_id, run_now, alive_ms, held, nq, then nq
-- pairs (queue, quota), then settle records as in settle.lua. n = 0 settles only. held:
-- how many tasks the worker still holds after this settle (a lost task is claimed only by
-- a worker holding nothing, see claim_framed).
-- Returns {settled, framed deliveries} (see claim_framed in common.lua); settled counts
-- the records that applied: the others were fenced out (no longer this worker's claim).
local dead_ttl, lease, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local worker, run_now, alive = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local held, nq = tonumber(ARGV[8]), tonumber(ARGV[9])
local now = now_ms()
local queues, quotas = {}, {}
for i = 10, 9 + 2 * nq, 2 do
  queues[#queues + 1] = ARGV[i]
  quotas[#quotas + 1] = tonumber(ARGV[i + 1])
end
local settled = settle_records(10 + 2 * nq, dead_ttl, now)
if n > 0 then
  return {settled, claim_framed(queues, quotas, n, now, now + lease, worker, run_now, alive, held)}
end
return {settled, ''}
