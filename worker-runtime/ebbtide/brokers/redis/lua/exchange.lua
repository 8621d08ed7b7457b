-- Settle a batch and claim the slots it frees, in one round trip (the worker's hot path).
-- ARGV: prefix, dead_ttl_ms, lease_ms, n, nq, then nq pairs (queue, quota), then settle
-- records as in settle.lua. n = 0 settles only.
-- Returns {settled, framed deliveries} (see claim_framed in common.lua)
local dead_ttl, lease, n, nq = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local queues, quotas = {}, {}
for i = 6, 5 + 2 * nq, 2 do
  queues[#queues + 1] = ARGV[i]
  quotas[#quotas + 1] = tonumber(ARGV[i + 1])
end
local settled = settle_records(6 + 2 * nq, dead_ttl, now)
if n > 0 then return {settled, claim_framed(queues, quotas, n, now, now + lease)} end
return {settled, ''}
