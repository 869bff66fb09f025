-- KEYS: pool keys. ARGV: now, prefix, mode (pick|ready), default rpm, default max_conn,
-- lease id, ttl, ids to avoid (pick) or exclude (ready)...
-- -> {id | '', wait s (-1: none without an admin), leased 1|0}
-- pick: a key not avoided if one is usable, else one of the avoided (the same round-robin
-- order as the local form's two passes), else how long until any key is usable.
-- ready: how long until a key not excluded is usable, without taking one.
local now = now_s()
local prefix, mode = ARGV[2], ARGV[3]
local drpm, dmc = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl = tonumber(ARGV[7])
local excl = {}
for i = 8, #ARGV do excl[ARGV[i]] = true end
promote(now)

local function take(id, rpm, mc)
  local leased = '0'
  if mc > 0 then
    local ck = prefix .. 'c:' .. id
    redis.call('ZADD', ck, now + ttl, ARGV[6])
    redis.call('PEXPIRE', ck, math.ceil(ttl * 3000))
    leased = '1'
  end
  if rpm > 0 then
    local rk = prefix .. 'r:' .. id
    redis.call('LPUSH', rk, fmt(now))
    redis.call('LTRIM', rk, 0, rpm - 1)
    redis.call('PEXPIRE', rk, 61000)
  end
  return leased
end

-- one turn of the ring: the first usable key not in `skip` is taken; else the soonest wait of
-- a key at its own limits, and whether a usable key was passed over for being in `skip`
local function scan(skip)
  local best, passed = nil, false
  local n = redis.call('LLEN', RING)
  if n > 2000 then n = 2000 end
  for _ = 1, n do
    local id = redis.call('LPOP', RING)
    if not id then break end
    if redis.call('HGET', ST, id) ~= 'a' then
      redis.call('SREM', INRING, id)
    else
      redis.call('RPUSH', RING, id)
      local rpm, mc = key_limits(id, drpm, dmc)
      local w = limit_wait(prefix, id, now, rpm, mc)
      if w == 0 then
        if not skip[id] then return id, take(id, rpm, mc), nil, passed end
        passed = true
      elseif not best or w < best then
        best = w
      end
    end
  end
  return nil, '0', best, passed
end

-- the soonest a cooling key not in `skip` returns, then (none at all) an exhausted key
local function later(best, skip)
  local cool = redis.call('ZRANGE', COOL, 0, 63, 'WITHSCORES')
  for i = 1, #cool, 2 do
    if not skip[cool[i]] then
      local w = math.max(0, tonumber(cool[i + 1]) - now)
      if not best or w < best then best = w end
      break
    end
  end
  if not best then
    local held = redis.call('ZRANGE', HOLD, 0, 63, 'WITHSCORES')
    for i = 1, #held, 2 do
      local v = redis.call('HGET', ST, held[i])
      if v and code_of(v) == 'x' then
        best = math.max(0, tonumber(held[i + 1]) - now)
        break
      end
    end
  end
  return best and fmt(best) or '-1'
end

if mode == 'pick' then
  local id, leased, best, passed = scan(excl)
  if not id and passed then id, leased, best = scan({}) end
  if id then return {id, '0', leased} end
  return {'', later(best, {}), '0'}
end

local best = nil
local n = redis.call('LLEN', RING)
if n > 2000 then n = 2000 end
for _, id in ipairs(redis.call('LRANGE', RING, 0, n - 1)) do
  if not excl[id] and redis.call('HGET', ST, id) == 'a' then
    local rpm, mc = key_limits(id, drpm, dmc)
    local w = limit_wait(prefix, id, now, rpm, mc)
    if w == 0 then return {'', '0', '0'} end
    if not best or w < best then best = w end
  end
end
return {'', later(best, excl), '0'}
