-- KEYS: leases. ARGV: now, lease id, max_conn, channel, provider.
local full = redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3])
local n = redis.call('ZREM', KEYS[1], ARGV[2])
if n == 1 and full then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return n
