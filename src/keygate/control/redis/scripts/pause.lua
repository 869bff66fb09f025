-- KEYS: adm. ARGV: now, until.
local untl = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0') or 0
if untl > cur then
  redis.call('HSET', KEYS[1], 'pause', untl)
  redis.call('PEXPIRE', KEYS[1], 3600000)
end
return 1
