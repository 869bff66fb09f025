-- KEYS: fair, waiting. ARGV: now, client.
-- The instance's last waiting request of this client left without a slot (timeout, cancel):
-- its turn is not held for it.
redis.call('ZREM', KEYS[1], ARGV[2])
return redis.call('ZREM', KEYS[2], ARGV[2])
