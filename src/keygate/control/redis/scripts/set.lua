-- KEYS: pool keys. ARGV: now, id, code, until, channel, provider, error. An admin's (or a
-- re-check's) word: written as is.
local id, code, untl = ARGV[2], ARGV[3], tonumber(ARGV[4]) or 0
place(id, code, untl)
if code == 'a' then redis.call('HDEL', STRIKES, id) end
announce(ARGV[5], ARGV[6], id, code, untl, ARGV[7], nil)
return 1
