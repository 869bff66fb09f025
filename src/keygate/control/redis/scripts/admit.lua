-- KEYS: adm, leases. ARGV: now, rps, burst, max_conn, lease id, ttl.
-- -> {1, tokens left} | {0, wait s, earliest lease expiry s}; wait -1: the gate is full.
local now = now_s()
local rps, burst, maxc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = tonumber(ARGV[6])
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
if rps > 0 then
  if burst < 1 then burst = 1 end
  tokens = tonumber(st[1])
  local stamp = tonumber(st[2])
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
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'stamp', stamp)
  redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(3600, burst / rps + 60) * 1000))
end
if maxc > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 3000))
end
return {1, fmt(tokens)}
