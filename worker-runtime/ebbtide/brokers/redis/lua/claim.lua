-- Claim up to n ready tasks across queues under a lease, highest priority first.
-- Also promotes due delayed tasks and reclaims expired leases and the claims of dead
-- workers, so no separate scheduler process is needed: any fetching worker keeps the
-- queues moving.
-- ARGV: prefix, lease_ms, n, worker_id ('' = none), run_now, alive_ms, held, then pairs
-- (queue, quota). held: how many tasks the worker holds now (see claim_framed).
-- Pass 1 takes up to each queue's quota (weighted mode); pass 2 fills what is left in
-- the given order (strict).
-- Returns {now_ms, framed deliveries} (see claim_framed in common.lua)
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local worker, run_now, alive = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local held = tonumber(ARGV[7])
local now = now_ms()
local queues, quotas = {}, {}
for i = 8, #ARGV, 2 do
  queues[#queues + 1] = ARGV[i]
  quotas[#quotas + 1] = tonumber(ARGV[i + 1])
end
return {now, claim_framed(queues, quotas, n, now, now + lease, worker, run_now, alive, held)}
