-- Fixed-window rate limit shared by every worker: take up to `want` tokens.
-- ARGV: prefix, task name, limit, window_ms, want
-- Returns {granted, ms until the window ends}
local name, limit, window, want = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local slot = math.floor(now / window)
local key = P .. ':rate:' .. name .. ':' .. fmt(slot)
local used = tonumber(redis.call('GET', key) or '0')
local granted = math.max(0, math.min(want, limit - used))
if granted > 0 then
  redis.call('INCRBY', key, granted)
  redis.call('PEXPIRE', key, window * 2)
end
return {granted, (slot + 1) * window - now}
