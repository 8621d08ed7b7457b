-- Dead-letter queue maintenance, atomic per member.
-- ARGV: prefix, op ('replay' | 'purge'), queue, then for replay pairs (member, payload),
-- for purge members. A member already gone (replayed or purged meanwhile) is skipped.
local op, q = ARGV[2], ARGV[3]
local now = now_ms()
local done = 0
if op == 'replay' then
  for i = 4, #ARGV, 2 do
    local member, payload = ARGV[i], ARGV[i + 1]
    if redis.call('ZREM', k_dead(q), member) == 1 then
      local p, id = split_member(member)
      redis.call('HSET', k_msgs(q), id, payload)
      redis.call('HDEL', k_lost(q), id)  -- a replayed task starts afresh
      redis.call('RPUSH', k_ready(q, p), fmt(now) .. '|' .. p .. '|' .. id)
      redis.call('HINCRBY', k_counters(q), 'enqueued', 1)
      done = done + 1
    end
  end
elseif op == 'purge' then
  for i = 4, #ARGV do
    if redis.call('ZREM', k_dead(q), ARGV[i]) == 1 then
      local _, id = split_member(ARGV[i])
      if id then
        redis.call('HDEL', k_msgs(q), id)
        redis.call('HDEL', k_lost(q), id)
      end
      done = done + 1
    end
  end
end
return done
