-- KEYS: leases. ARGV: now, this instance's lease prefix, the leases it holds... Drops the
-- others of ours: grants whose answer was lost when the connection broke.
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local mine, n = ARGV[2], 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #mine) == mine and not keep[m] then
    redis.call('ZREM', KEYS[1], m)
    n = n + 1
  end
end
return n
