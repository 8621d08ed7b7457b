-- Claim up to n ready tasks across the queues of one slot under a lease, highest
-- priority first. Also promotes due delayed tasks and reclaims expired leases and the
-- claims of dead workers, so no separate scheduler process is needed: any fetching
-- worker keeps the queues moving. Arguments and reply: `work` in common.lua (no records).
return work()
