-- Dead-letter queue maintenance, atomic per member.
-- KEYS: the queue's block. ARGV: op ('replay' | 'purge'), queue, then for replay pairs
-- (member, payload), for purge members. A member already gone (replayed or purged
-- meanwhile) is skipped.
local op = ARGV[1]
local Q = queue_at(1, ARGV[2])
local now = now_ms()
local done = 0
if op == 'replay' then
  for i = 3, #ARGV, 2 do
    local member, payload = ARGV[i], ARGV[i + 1]
    if redis.call('ZREM', Q.dead, member) == 1 then
      local p, id = split_member(member)
      redis.call('HSET', Q.msgs, id, payload)
      redis.call('HDEL', Q.lost, id)  -- a replayed task starts afresh
      redis.call('RPUSH', Q.ready[tonumber(p)], fmt(now) .. '|' .. p .. '|' .. id)
      redis.call('HINCRBY', Q.counters, 'enqueued', 1)
      done = done + 1
    end
  end
elseif op == 'purge' then
  for i = 3, #ARGV do
    if redis.call('ZREM', Q.dead, ARGV[i]) == 1 then
      local _, id = split_member(ARGV[i])
      if id then
        redis.call('HDEL', Q.msgs, id)
        redis.call('HDEL', Q.lost, id)
      end
      done = done + 1
    end
  end
end
return done
