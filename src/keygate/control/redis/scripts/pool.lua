-- Included by the key-pool scripts: the pool's keys, its state codes and the helpers that keep
-- the ring and the time indexes in step.
local ST, RING, INRING, COOL, HOLD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local LIM, STRIKES, G429, GUARD, ADM = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
-- KEYS[11] is the quota's (quota.lua); a key's "tier:weight" when not 0:1, and its current
-- weight in the smooth weighted round-robin of its tier
local TW, SW = KEYS[12], KEYS[13]
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
-- a key's quota limits (rpm, rph, rpd, tpm, tph, tpd) and max_conn: its own, else the
-- provider's `dl` ("rpm:rph:rpd:tpm:tph:tpd") and `dmc`
local function key_limits(id, dl, dmc)
  local l, mc = {}, dmc
  for x in string.gmatch(dl, '%d+') do l[#l + 1] = tonumber(x) end
  local lim = redis.call('HGET', LIM, id)
  if lim then
    local own = {}
    for x in string.gmatch(lim, '%d+') do own[#own + 1] = tonumber(x) end
    if own[1] and own[1] > 0 then l[1] = own[1] end
    if own[2] and own[2] > 0 then mc = own[2] end
    for i = 2, 6 do
      if own[i + 1] and own[i + 1] > 0 then l[i] = own[i + 1] end
    end
  end
  return l, mc
end
