-- Enqueue a batch of messages into one queue, atomically with the counters.
-- KEYS: the queue's ready:0..9, inflight, delayed, msgs, counters, alive (keys.py
-- ENQUEUE_PARTS: no more, since the producer's ACL user needs write access to each), then
-- its unique key P:q:{q}:uniq:<key> when keyed.
-- ARGV: queue, max_backlog (0 = none), unique_ttl_ms, prio, delay_ms, keyed (0|1),
--       payloads joined by "\n" (JSON text never holds a raw newline; each payload
--       starts with {"id":"<id>", so the id needs no argument of its own), wake channel
-- Returns {status, dups}: one status character per message, '.' enqueued, '=' duplicate
-- key (its pending task's id is the next item of dups), '!' refused (backlog full).
-- Publishes the queue's name on the wake channel when ready work lands on a queue that
-- was idle (nothing ready or in flight) or that no live worker claims from: the operator
-- subscribes, so activation from zero does not wait for its next poll. Busy queues with
-- workers publish nothing. (The queue registry is added to by the caller: another slot.)
local ready = {}
for lvl = 0, MAX_PRIO do ready[lvl] = KEYS[1 + lvl] end
local Q = {name = ARGV[1], ready = ready, inflight = KEYS[11], delayed = KEYS[12],
  msgs = KEYS[13], counters = KEYS[14], alive = KEYS[15]}
local max_backlog = tonumber(ARGV[2])
local unique_ttl = tonumber(ARGV[3])
local p, delay, keyed, blob = ARGV[4], tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7]
local ukey = keyed and KEYS[16] or nil
local now = now_ms()

local backlog = 0
if max_backlog > 0 then
  for lvl = 0, MAX_PRIO do backlog = backlog + redis.call('LLEN', Q.ready[lvl]) end
  backlog = backlog + redis.call('ZCARD', Q.delayed)
end

local function idle()
  if redis.call('ZCARD', Q.inflight) > 0 then return false end
  for lvl = 0, MAX_PRIO do
    if redis.call('LLEN', Q.ready[lvl]) > 0 then return false end
  end
  return true
end
local wake = delay == 0 and (redis.call('ZCOUNT', Q.alive, now, '+inf') == 0 or idle())

local status, dups = {}, {}
local accepted = 0
local ready_key, prefix = Q.ready[tonumber(p)], fmt(now) .. '|' .. p .. '|'
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
    if ukey and not redis.call('SET', ukey, id, 'NX', 'PX', unique_ttl) then
      existing = redis.call('GET', ukey) or ''
    end
    if existing then
      status[#status + 1] = '='
      dups[#dups + 1] = existing
    else
      redis.call('HSET', Q.msgs, id, payload)
      if delay > 0 then
        redis.call('ZADD', Q.delayed, now + delay, p .. '|' .. id)
      else
        redis.call('RPUSH', ready_key, prefix .. id)
      end
      accepted = accepted + 1
      backlog = backlog + 1
      status[#status + 1] = '.'
    end
  end
end
if accepted > 0 then redis.call('HINCRBY', Q.counters, 'enqueued', accepted) end
-- pcall: a user without channel permissions (Redis 7 ACLs default to none) still sends;
-- the operator then sees the tasks at its next poll.
if wake and accepted > 0 then redis.pcall('PUBLISH', ARGV[8], Q.name) end
return {table.concat(status), dups}
