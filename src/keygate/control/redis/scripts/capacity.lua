-- KEYS: adm, leases. ARGV: now, rps, burst. Reads only (spread routing's capacity read).
-- -> {tokens in the bucket now (0 while paused), slots in flight}
local now = now_s()
local rps, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'tokens', 'stamp', 'pause')
local pause = tonumber(st[3])
local tokens = burst
if pause and pause > now then
  tokens = 0
elseif rps > 0 then
  local t, stamp = tonumber(st[1]), tonumber(st[2])
  if t ~= nil and stamp ~= nil then
    tokens = t
    if now > stamp then tokens = tokens + (now - stamp) * rps end
    if tokens > burst then tokens = burst end
  end
end
local held = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
return {fmt(tokens), held}
