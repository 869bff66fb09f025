-- KEYS: pool keys. ARGV: now, channel, provider, then (id, code, until, own limits
-- "rpm:max_conn:rph:rpd:tpm:tph:tpd" or '', 1 when it has own quota limits, "tier:weight" or
-- '' for 0:1)...
-- Registers keys; Redis's health wins (it is fresher than the store), except that `disabled`
-- is the admin's: the store's word on it wins both ways. -> the state of each key after.
local now = now_s()
local out = {}
for i = 4, #ARGV, 6 do
  local id, code, untl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]) or 0
  local lim = ARGV[i + 3]
  if code == 'c' and untl <= now then code = 'a' end
  local cur = redis.call('HGET', ST, id)
  local target = nil
  if not cur then
    target = code
  elseif code == 'd' and cur ~= 'd' then
    target = 'd'
  elseif cur == 'd' and code ~= 'd' then
    target = code
  end
  if target then
    place(id, target, untl)
    if cur then announce(ARGV[2], ARGV[3], id, target, untl, '', nil) end
  elseif cur == 'a' and redis.call('SADD', INRING, id) == 1 then
    redis.call('RPUSH', RING, id)
  end
  if lim ~= '' then
    redis.call('HSET', LIM, id, lim)
  else
    redis.call('HDEL', LIM, id)
  end
  if ARGV[i + 4] == '1' then redis.call('HSET', QON, id, 1) end
  if ARGV[i + 5] ~= '' then
    redis.call('HSET', TW, id, ARGV[i + 5])
  else
    redis.call('HDEL', TW, id)
  end
  out[#out + 1] = redis.call('HGET', ST, id)
end
return out
