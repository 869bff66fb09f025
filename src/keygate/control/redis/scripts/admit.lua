-- KEYS: adm, leases, fair (zset client -> turn stamp), waiting (zset client -> registration
-- expiry). ARGV: now, rps, burst, max_conn, lease id, ttl, client, more, channel, provider.
-- -> {1, tokens left} | {0, wait s, earliest lease expiry s}; wait -1: the gate is full;
--    wait -2: capacity is free but another waiting client's turn comes first.
--
-- Fair share across the fleet: a client with requests waiting (on any instance) is registered
-- in `waiting` (refreshed by every ask, expiring after a few seconds) and `fair`; a free slot
-- goes to the registered client served longest ago (newcomers first). `more` says whether the
-- asker's instance has more requests of this client waiting after this one. With nobody
-- registered and nothing more waiting, all of this costs one ZCARD.
local now = now_s()
local rps, burst, maxc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = tonumber(ARGV[6])
local client, more = ARGV[7] or '-', tonumber(ARGV[8] or '0')
local REGISTERED_S = 3
local fair = false
if KEYS[4] and (more > 0 or redis.call('ZCARD', KEYS[4]) > 0) then
  fair = true
  local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  if #stale > 0 then
    redis.call('ZREM', KEYS[3], unpack(stale))
    redis.call('ZREM', KEYS[4], unpack(stale))
  end
  redis.call('ZADD', KEYS[4], now + REGISTERED_S, client)
  redis.call('ZADD', KEYS[3], 'NX', 0, client)
  redis.call('PEXPIRE', KEYS[3], 60000)
  redis.call('PEXPIRE', KEYS[4], 60000)
end
local st = redis.call('HMGET', KEYS[1], 'tokens', 'stamp', 'pause')
local pause = tonumber(st[3])
if pause and pause > now then return {0, fmt(pause - now), '0'} end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= maxc then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, '-1', fmt(tonumber(first[2]) - now)}
  end
end
local tokens = -1
local stamp = 0
if rps > 0 then
  if burst < 1 then burst = 1 end
  tokens = tonumber(st[1])
  stamp = tonumber(st[2])
  if tokens == nil or stamp == nil then
    tokens = burst
    stamp = now
  end
  if now > stamp then
    tokens = tokens + (now - stamp) * rps
    stamp = now
  end
  if tokens > burst then tokens = burst end
  if tokens < 1 then return {0, fmt((1 - tokens) / rps), '0'} end
end
if fair then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if first[1] ~= client and tonumber(first[2]) < tonumber(redis.call('ZSCORE', KEYS[3], client)) then
    redis.call('PUBLISH', ARGV[9], ARGV[10])  -- wake the instances: the client in turn asks
    return {0, '-2', '0'}
  end
  if more > 0 then
    redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[1], 'turn', 1), client)
  else
    redis.call('ZREM', KEYS[3], client)
    redis.call('ZREM', KEYS[4], client)
  end
end
if rps > 0 then
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'stamp', stamp)
  redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(3600, burst / rps + 60) * 1000))
end
if maxc > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 3000))
end
return {1, fmt(tokens)}
