-- KEYS: pool keys. ARGV: now, prefix, id, day start, requests, tokens, day end. What the store
-- says a key spent today (a restart mid-day), unless Redis already counts that day.
local now = now_s()
local prefix, id, day = ARGV[2], ARGV[3], tonumber(ARGV[4])
local qk = prefix .. 'q:' .. id
if tonumber(redis.call('HGET', qk, 'd') or '') ~= day then
  redis.call('HSET', qk, 'd', fmt(day), 'rd', ARGV[5], 'td', ARGV[6])
end
redis.call('HSET', QON, id, 1)
qexpire(prefix, id, tonumber(ARGV[7]), now)
return 1
