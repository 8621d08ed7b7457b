-- Settle a batch of claimed tasks: ack, retry, dead, requeue or postpone.
-- Each op applies only if the caller still holds the lease (ZREM succeeds), so a
-- worker whose lease expired can never delete a task another worker now owns.
-- ARGV: prefix, dead_ttl_ms, then records of two kinds:
--   'A', queue, busy_us, n, entry * n        plain acks (the hot path: one arg per task)
--   'X', op, queue, entry, payload ('' = unchanged), delay_ms, busy_us, unique_key ('' = none)
return settle_records(3, tonumber(ARGV[2]), now_ms())
