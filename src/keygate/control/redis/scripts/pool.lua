-- Included by the key-pool scripts: the pool's keys, its state codes and the helpers that keep
-- the ring and the time indexes in step.
local ST, RING, INRING, COOL, HOLD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local LIM, STRIKES, G429, GUARD, ADM = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local NAMES = {a = 'active', c = 'cooling', i = 'invalid', x = 'exhausted', d = 'disabled'}
local function code_of(v) return string.sub(v, 1, 1) end
local function until_of(v) return tonumber(string.sub(v, 3)) or 0 end
-- write a key's state and keep the ring and the time indexes in step
local function place(id, code, untl)
  if code == 'a' then
    redis.call('HSET', ST, id, 'a')
    if redis.call('SADD', INRING, id) == 1 then redis.call('RPUSH', RING, id) end
    redis.call('ZREM', COOL, id)
    redis.call('ZREM', HOLD, id)
  elseif code == 'c' then
    redis.call('HSET', ST, id, 'c:' .. fmt(untl))
    redis.call('ZADD', COOL, untl, id)
    redis.call('ZREM', HOLD, id)
  elseif code == 'i' or code == 'x' then
    redis.call('HSET', ST, id, code .. ':' .. fmt(untl))
    redis.call('ZADD', HOLD, untl, id)
    redis.call('ZREM', COOL, id)
  else
    redis.call('HSET', ST, id, 'd')
    redis.call('ZREM', COOL, id)
    redis.call('ZREM', HOLD, id)
  end
end
local function announce(channel, provider, id, code, untl, err, strikes)
  local msg = {t = 'health', p = provider, id = tonumber(id), s = NAMES[code], u = fmt(untl)}
  if err ~= '' then msg.e = err end
  if strikes then msg.k = strikes end
  redis.call('PUBLISH', channel, cjson.encode(msg))
end
-- cooling keys whose time has come go back into the ring
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', COOL, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    local v = redis.call('HGET', ST, id)
    if v and code_of(v) == 'c' and until_of(v) <= now then
      place(id, 'a', 0)
    else
      redis.call('ZREM', COOL, id)
    end
  end
end
local function key_limits(id, drpm, dmc)
  local rpm, mc = drpm, dmc
  local lim = redis.call('HGET', LIM, id)
  if lim then
    local r, m = string.match(lim, '^(%d+):(%d+)$')
    r, m = tonumber(r), tonumber(m)
    if r and r > 0 then rpm = r end
    if m and m > 0 then mc = m end
  end
  return rpm, mc
end
-- 0 when the key's own limits allow one more request now, else seconds to wait
local function limit_wait(prefix, id, now, rpm, mc)
  if mc > 0 then
    local ck = prefix .. 'c:' .. id
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
    if redis.call('ZCARD', ck) >= mc then return 1.0 end
  end
  if rpm > 0 then
    local rk = prefix .. 'r:' .. id
    if redis.call('LLEN', rk) >= rpm then
      local oldest = tonumber(redis.call('LINDEX', rk, rpm - 1))
      if oldest and now - oldest < 60 then return 60 - (now - oldest) end
    end
  end
  return 0
end
