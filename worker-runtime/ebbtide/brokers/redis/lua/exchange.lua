-- Settle a batch and claim the slots it frees, in one round trip (the worker's hot path).
-- Arguments and reply: `work` in common.lua.
return work()
