-- KEYS: pool keys. ARGV: now, prefix, mode (pick|ready), default quota limits
-- ("rpm:rph:rpd:tpm:tph:tpd"), default max_conn, lease id, ttl, tokens, day start, day end,
-- the key to prefer ('' for none), ids to avoid (pick) or exclude (ready)...
-- -> {id | '', wait s (-1: none without an admin), leased 1|0, quota 1|0, now}
-- pick: the preferred key when it can serve now and no key of a lower tier can; else a key not
-- avoided if one is usable, else one of the avoided (the same order as the local form's two
-- passes), else how long until any key is usable (quota 1: the quota windows, not health,
-- hold every usable key back). Without tiers or weights, the ring's round-robin; with them,
-- the lowest tier with a usable key, by smooth weighted round-robin inside it.
-- ready: how long until a key not excluded is usable, without taking one.
local now = now_s()
local prefix, mode = ARGV[2], ARGV[3]
local dl, dmc = ARGV[4], tonumber(ARGV[5])
local ttl = tonumber(ARGV[7])
local cost = tonumber(ARGV[8]) or 0
local day, dayend = tonumber(ARGV[9]), tonumber(ARGV[10])
local pin = ARGV[11]
local excl = {}
for i = 12, #ARGV do excl[ARGV[i]] = true end
promote(now)
local qany = dl ~= '0:0:0:0:0:0' or redis.call('HLEN', QON) > 0
local tiered = redis.call('HLEN', TW) > 0

-- 0 when the key's own limits allow one more request now, else seconds to wait; and the
-- quota windows' own wait (nil when max_conn holds it, or no quota applies)
local function limit_wait(id, l, mc)
  if mc > 0 then
    local ck = prefix .. 'c:' .. id
    redis.call('ZREMRANGEBYSCORE', ck, '-inf', now)
    if redis.call('ZCARD', ck) >= mc then return 1.0, nil end
  end
  if not qany or not qhas(id, l) then return 0, nil end
  qtrim(prefix, id, now, day)
  local w = qwait(prefix, id, l, now, cost, dayend)
  return w, w
end

local function take(id, l, mc)
  local leased = '0'
  if mc > 0 then
    local ck = prefix .. 'c:' .. id
    redis.call('ZADD', ck, now + ttl, ARGV[6])
    redis.call('PEXPIRE', ck, math.ceil(ttl * 3000))
    leased = '1'
  end
  if qany and qhas(id, l) then qcharge(prefix, id, now, cost, ARGV[6], dayend) end
  return leased
end

-- when `first` is nearly spent: among it and the next few usable keys that are too, the one
-- whose window resets soonest (as the local form's `_prefer`); it takes this turn, `first`
-- keeps its place
local function prefer(first, fl, skip)
  local soonest = qsoon(prefix, first, fl, now, dayend)
  if not soonest then return first end
  local best, at = first, -1
  local n = redis.call('LLEN', RING)
  for i = 0, math.min(4, n - 1) - 1 do
    local peer = redis.call('LINDEX', RING, i)
    local pl, pmc = key_limits(peer, dl, dmc)
    if redis.call('HGET', ST, peer) == 'a' and not skip[peer] and qhas(peer, pl) then
      qtrim(prefix, peer, now, day)
      local reset = qsoon(prefix, peer, pl, now, dayend)
      if reset and reset < soonest and limit_wait(peer, pl, pmc) == 0 then
        best, soonest, at = peer, reset, i
      end
    end
  end
  if at >= 0 then
    redis.call('LREM', RING, 1, best)
    redis.call('RPOP', RING)
    redis.call('LPUSH', RING, first)
    redis.call('RPUSH', RING, best)
  end
  return best
end

-- one turn of the ring: the first usable key not in `skip` is taken; else the soonest wait of
-- a key at its own limits (and of the quota windows alone), and whether a usable key was
-- passed over for being in `skip`
local function scan(skip)
  local best, qbest, passed = nil, nil, false
  local n = redis.call('LLEN', RING)
  if n > 2000 then n = 2000 end
  for _ = 1, n do
    local id = redis.call('LPOP', RING)
    if not id then break end
    if redis.call('HGET', ST, id) ~= 'a' then
      redis.call('SREM', INRING, id)
    else
      redis.call('RPUSH', RING, id)
      local l, mc = key_limits(id, dl, dmc)
      local w, qw = limit_wait(id, l, mc)
      if w == 0 then
        if not skip[id] then
          if qany and qhas(id, l) then
            id = prefer(id, l, skip)
            l, mc = key_limits(id, dl, dmc)
          end
          return id, take(id, l, mc), nil, nil, passed
        end
        passed = true
      else
        if not best or w < best then best = w end
        if qw and (not qbest or qw < qbest) then qbest = qw end
      end
    end
  end
  return nil, '0', best, qbest, passed
end

-- the active keys of the ring, each {id, tier, weight}, lowest tier first, in id order
local function members()
  local n = redis.call('LLEN', RING)
  if n > 2000 then n = 2000 end
  local out = {}
  for _, id in ipairs(redis.call('LRANGE', RING, 0, n - 1)) do
    if redis.call('HGET', ST, id) == 'a' then
      local t, w = 0, 1
      local v = redis.call('HGET', TW, id)
      if v then
        local a, b = string.match(v, '^(%d+):(%d+)$')
        t, w = tonumber(a), tonumber(b)
      end
      out[#out + 1] = {id, t, w, tonumber(id)}
    end
  end
  table.sort(out, function(x, y)
    if x[2] ~= y[2] then return x[2] < y[2] end
    return x[4] < y[4]
  end)
  return out
end

-- `scan` with tiers: the lowest tier with a usable key not in `skip`, and in it smooth
-- weighted round-robin (every usable key gains its weight, the highest is taken and gives back
-- the sum); a nearly spent winner yields to the usable key of its tier resetting soonest
local function tscan(skip)
  local best, qbest, passed = nil, nil, false
  local all = members()
  local i = 1
  while i <= #all do
    local tier = all[i][2]
    local top, topcw, total, usable = nil, nil, 0, {}
    while i <= #all and all[i][2] == tier do
      local id, w = all[i][1], all[i][3]
      local l, mc = key_limits(id, dl, dmc)
      local lw, qw = limit_wait(id, l, mc)
      if lw == 0 then
        if skip[id] then
          passed = true
        else
          local cw = redis.call('HINCRBY', SW, id, w)
          total = total + w
          usable[#usable + 1] = {id, l}
          if not top or cw > topcw then top, topcw = id, cw end
        end
      else
        if not best or lw < best then best = lw end
        if qw and (not qbest or qw < qbest) then qbest = qw end
      end
      i = i + 1
    end
    if top then
      local l, mc = key_limits(top, dl, dmc)
      if qany and qhas(top, l) then
        local soonest = qsoon(prefix, top, l, now, dayend)
        if soonest then
          for _, u in ipairs(usable) do
            if u[1] ~= top and qhas(u[1], u[2]) then
              local reset = qsoon(prefix, u[1], u[2], now, dayend)
              if reset and reset < soonest then top, soonest = u[1], reset end
            end
          end
          l, mc = key_limits(top, dl, dmc)
        end
      end
      redis.call('HINCRBY', SW, top, -total)
      return top, take(top, l, mc), nil, nil, passed
    end
  end
  return nil, '0', best, qbest, passed
end

-- the preferred key, when it can serve now: active, not avoided, its limits allow it, and no
-- key of a lower tier can serve
local function pinned()
  if pin == '' or excl[pin] or redis.call('HGET', ST, pin) ~= 'a' then return nil end
  local l, mc = key_limits(pin, dl, dmc)
  if limit_wait(pin, l, mc) ~= 0 then return nil end
  local v = tiered and redis.call('HGET', TW, pin)
  local tier = v and tonumber(string.match(v, '^(%d+):')) or 0
  if tier > 0 then
    for _, m in ipairs(members()) do
      if m[2] >= tier then break end
      if not excl[m[1]] then
        local ml, mmc = key_limits(m[1], dl, dmc)
        if limit_wait(m[1], ml, mmc) == 0 then return nil end
      end
    end
  end
  return pin, take(pin, l, mc)
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
  return best
end

if mode == 'pick' then
  local id, leased = pinned()
  if id then return {id, '0', leased, '0', fmt(now)} end
  local pass = tiered and tscan or scan
  local best, qbest, passed
  id, leased, best, qbest, passed = pass(excl)
  if not id and passed then id, leased, best, qbest = pass({}) end
  if id then return {id, '0', leased, '0', fmt(now)} end
  local wait = later(best, {})
  local quota = '0'
  if wait and qbest and qbest > 0 and qbest <= wait + 1e-9 then
    wait, quota = qbest, '1'
  end
  return {'', wait and fmt(wait) or '-1', '0', quota, fmt(now)}
end

local best = nil
local n = redis.call('LLEN', RING)
if n > 2000 then n = 2000 end
for _, id in ipairs(redis.call('LRANGE', RING, 0, n - 1)) do
  if not excl[id] and redis.call('HGET', ST, id) == 'a' then
    local l, mc = key_limits(id, dl, dmc)
    local w = limit_wait(id, l, mc)
    if w == 0 then return {'', '0', '0', '0', fmt(now)} end
    if not best or w < best then best = w end
  end
end
local wait = later(best, excl)
return {'', wait and fmt(wait) or '-1', '0', '0', fmt(now)}
