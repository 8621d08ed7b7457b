-- Settle a batch and claim the slots it frees, in one round trip (the worker's hot path).
-- ARGV: prefix, dead_ttl_ms, lease_ms, n, worker_id, run_now, nq, then nq pairs
-- (queue, quota), then settle records as in settle.lua. n = 0 settles only.
-- Returns {settled, framed deliveries} (see claim_framed in common.lua); settled counts
-- the records that applied: the others were fenced out (no longer this worker's claim).
local dead_ttl, lease, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local worker, run_now, nq = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
local queues, quotas = {}, {}
for i = 8, 7 + 2 * nq, 2 do
  queues[#queues + 1] = ARGV[i]
  quotas[#quotas + 1] = tonumber(ARGV[i + 1])
end
local settled = settle_records(8 + 2 * nq, dead_ttl, now)
if n > 0 then
  return {settled, claim_framed(queues, quotas, n, now, now + lease, worker, run_now)}
end
return {settled, ''}
