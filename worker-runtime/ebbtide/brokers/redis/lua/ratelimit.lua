-- Sliding-window rate limit shared by every worker: take up to `want` tokens.
-- A sorted set holds one member per token taken, scored by when; a token counts for
-- exactly `window` ms, so no window of that length ever holds more than `limit` starts
-- (a fixed window would let twice the limit through across its boundary).
-- KEYS: the token set P:rate:{name}, its sequence P:rate:{name}:seq (one slot)
-- ARGV: limit, window_ms, want
-- Returns {granted, ms until the oldest token expires (0 if all were granted)}
local limit, window, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local key, seq = KEYS[1], KEYS[2]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local used = redis.call('ZCARD', key)
local granted = math.max(0, math.min(want, limit - used))
if granted > 0 then
  -- Unique members: a per-key sequence, since several tokens may share a millisecond.
  local last = redis.call('INCRBY', seq, granted)
  for i = last - granted + 1, last do
    redis.call('ZADD', key, now, fmt(i))
  end
  redis.call('PEXPIRE', key, window)
  redis.call('PEXPIRE', seq, window)
end
if granted >= want then
  return {granted, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {granted, math.max(1, tonumber(oldest[2]) + window - now)}
