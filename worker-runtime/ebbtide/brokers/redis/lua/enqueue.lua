-- Enqueue a batch of messages into one queue, atomically with the counters.
-- ARGV: prefix, queue, max_backlog (0 = none), unique_ttl_ms, prio, delay_ms,
--       key ('' = none), payloads joined by "\n" (JSON text never holds a raw newline;
--       each payload starts with {"id":"<id>", so the id needs no argument of its own)
-- Returns {status, dups}: one status character per message, '.' enqueued, '=' duplicate
-- key (its pending task's id is the next item of dups), '!' refused (backlog full).
-- Publishes the queue's name on P:wake when ready work lands on a queue that was idle
-- (nothing ready or in flight) or when no worker is registered at all: the operator
-- subscribes, so activation from zero does not wait for its next poll. Busy queues with
-- workers publish nothing.
local q = ARGV[2]
local max_backlog = tonumber(ARGV[3])
local unique_ttl = tonumber(ARGV[4])
local p, delay, key, blob = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local now = now_ms()
redis.call('SADD', K_QUEUES, q)

local backlog = 0
if max_backlog > 0 then
  for lvl = 0, MAX_PRIO do backlog = backlog + redis.call('LLEN', k_ready(q, lvl)) end
  backlog = backlog + redis.call('ZCARD', k_delayed(q))
end

local function idle(queue)
  if redis.call('ZCARD', k_inflight(queue)) > 0 then return false end
  for lvl = 0, MAX_PRIO do
    if redis.call('LLEN', k_ready(queue, lvl)) > 0 then return false end
  end
  return true
end
local wake = delay == 0 and (redis.call('ZCARD', K_WORKERS) == 0 or idle(q))

local status, dups = {}, {}
local accepted = 0
local ready_key, prefix = k_ready(q, p), fmt(now) .. '|' .. p .. '|'
local pos, len = 1, #blob
while pos <= len do
  local nl = string.find(blob, '\n', pos, true) or (len + 1)
  local payload = string.sub(blob, pos, nl - 1)
  pos = nl + 1
  local id = string.match(payload, '^{"id":"([^"]+)"')
  if not id then
    return redis.error_reply('enqueue: payload does not start with its id')
  end
  if max_backlog > 0 and backlog >= max_backlog then
    status[#status + 1] = '!'
  else
    local existing = false
    if key ~= '' and not redis.call('SET', k_uniq(q, key), id, 'NX', 'PX', unique_ttl) then
      existing = redis.call('GET', k_uniq(q, key)) or ''
    end
    if existing then
      status[#status + 1] = '='
      dups[#dups + 1] = existing
    else
      redis.call('HSET', k_msgs(q), id, payload)
      if delay > 0 then
        redis.call('ZADD', k_delayed(q), now + delay, p .. '|' .. id)
      else
        redis.call('RPUSH', ready_key, prefix .. id)
      end
      accepted = accepted + 1
      backlog = backlog + 1
      status[#status + 1] = '.'
    end
  end
end
if accepted > 0 then redis.call('HINCRBY', k_counters(q), 'enqueued', accepted) end
-- pcall: a user without channel permissions (Redis 7 ACLs default to none) still sends;
-- the operator then sees the tasks at its next poll.
if wake and accepted > 0 then redis.pcall('PUBLISH', P .. ':wake', q) end
return {table.concat(status), dups}
