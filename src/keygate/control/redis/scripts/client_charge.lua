-- A client key's limits (SPEC §13), one decision for the fleet: check rpm (sliding minute),
-- rpd and tpd (the UTC day), monthly_tokens (the UTC month) and, when all allow it, count the
-- request and its token estimate. The twin of clients/limits.py `check`.
-- KEYS[1] day hash (r: requests, t: tokens)   KEYS[2] month hash (t: tokens)
-- KEYS[3] minute zset (request id -> time)
-- ARGV: now, rpm, rpd, tpd, monthly_tokens, estimate, day_end, month_end, request id,
--       then the instance's own counts (r, t of the day, t of the month): a day or month that
--       Redis does not hold yet (first request, a Redis restart) starts from them.
-- Keys expire a minute after their window ends. Returns {0, r, t, mt} when counted, else
-- {1, limit, seconds until it resets, r, t, mt}.
local now = now_s()
local rpm, rpd, tpd, mtok = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local est = tonumber(ARGV[6])
local day_end, month_end = tonumber(ARGV[7]), tonumber(ARGV[8])
local GRACE = 60
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'r', ARGV[10], 't', ARGV[11])
  redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(day_end - now) + GRACE))
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 't', ARGV[12])
  redis.call('EXPIRE', KEYS[2], math.max(1, math.ceil(month_end - now) + GRACE))
end
local d = redis.call('HMGET', KEYS[1], 'r', 't')
local r, t = tonumber(d[1]) or 0, tonumber(d[2]) or 0
local mt = tonumber(redis.call('HGET', KEYS[2], 't')) or 0
local over, wait
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(now - 60))
  if redis.call('ZCARD', KEYS[3]) >= rpm then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    over, wait = 'rpm', tonumber(first[2]) + 60 - now
  end
end
if not over then
  if rpd > 0 and r >= rpd then
    over, wait = 'rpd', day_end - now
  elseif tpd > 0 and t + est > tpd then
    over, wait = 'tpd', day_end - now
  elseif mtok > 0 and mt + est > mtok then
    over, wait = 'monthly_tokens', month_end - now
  end
end
if over then return {1, over, fmt(wait), r, t, mt} end
if rpm > 0 then
  redis.call('ZADD', KEYS[3], fmt(now), ARGV[9])
  redis.call('EXPIRE', KEYS[3], 61)
end
r = redis.call('HINCRBY', KEYS[1], 'r', 1)
t = redis.call('HINCRBY', KEYS[1], 't', est)
mt = redis.call('HINCRBY', KEYS[2], 't', est)
return {0, r, t, mt}
