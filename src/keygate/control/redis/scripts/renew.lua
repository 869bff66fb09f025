-- KEYS: zsets (one per lease). ARGV: now, ttl, lease ids aligned with KEYS.
local now = now_s()
local ttl = tonumber(ARGV[2])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + ttl, ARGV[i + 2])
  redis.call('PEXPIRE', k, math.ceil(ttl * 3000))
end
return #KEYS
