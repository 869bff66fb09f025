-- A client request's token reservation replaced by the tokens its answer reported: the
-- difference added to the day's and the month's tokens (never below 0). A window Redis no
-- longer holds (it ended, or Redis restarted) is left alone: no key without an expiry.
-- KEYS[1] day hash, KEYS[2] month hash; ARGV: now (unused), difference
local diff = tonumber(ARGV[2])
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('HINCRBY', KEYS[i], 't', diff) < 0 then redis.call('HSET', KEYS[i], 't', 0) end
  end
end
return 1
