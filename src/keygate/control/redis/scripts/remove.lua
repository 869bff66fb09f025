-- KEYS: pool keys. ARGV: now, prefix, ids... (the ring drops them lazily)
for i = 3, #ARGV do
  local id = ARGV[i]
  redis.call('HDEL', ST, id)
  redis.call('HDEL', LIM, id)
  redis.call('HDEL', STRIKES, id)
  redis.call('ZREM', COOL, id)
  redis.call('ZREM', HOLD, id)
  redis.call('ZREM', G429, id)
  redis.call('HDEL', QON, id)
  redis.call('HDEL', TW, id)
  redis.call('HDEL', SW, id)
  local p = ARGV[2]
  redis.call('DEL', p .. 'c:' .. id, p .. 'q:' .. id, p .. 'qm:' .. id, p .. 'qh:' .. id,
    p .. 'tm:' .. id, p .. 'th:' .. id)
end
return #ARGV - 2
