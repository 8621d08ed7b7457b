-- Settle a batch of claimed tasks: ack, retry, dead, requeue or postpone.
-- Each op applies only if the caller still holds the lease (ZREM succeeds), so a
-- worker whose lease expired can never delete a task another worker now owns.
-- Arguments and reply: `work` in common.lua, with n = 0 (records: settle_records).
return work()
