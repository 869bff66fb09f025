-- Included by the pick and release scripts after the pool helpers: the per-key quota windows,
-- the twin of control/quota.py's KeyQuota. Per key id, under the pool's prefix:
--   qm:<id> qh:<id>  zset  pick id -> time (requests of the last minute / hour)
--   tm:<id> th:<id>  zset  "pick id|tokens" -> time (token charges of the last minute / hour)
--   q:<id>           hash  d (day start), rd, td (the day's requests, tokens), tms, ths (sums
--                          of tm, th), a:<window> = "remaining|reset|limit|period|tentative"
local QWIN = {'rpm', 'rph', 'rpd', 'tpm', 'tph', 'tpd'}
local QON = KEYS[11]
local function qhas(id, l)
  for i = 1, 6 do if l[i] > 0 then return true end end
  return redis.call('HEXISTS', QON, id) == 1
end
local function split(v)
  local out = {}
  for x in string.gmatch(v, '[^|]+') do out[#out + 1] = tonumber(x) end
  return out
end
-- drop what left the sliding windows; start a new day's counters
local function qtrim(prefix, id, now, day)
  redis.call('ZREMRANGEBYSCORE', prefix .. 'qm:' .. id, '-inf', fmt(now - 60))
  redis.call('ZREMRANGEBYSCORE', prefix .. 'qh:' .. id, '-inf', fmt(now - 3600))
  local qk = prefix .. 'q:' .. id
  for _, w in ipairs({{'tm:', 'tms', 60}, {'th:', 'ths', 3600}}) do
    local zk = prefix .. w[1] .. id
    local old = redis.call('ZRANGEBYSCORE', zk, '-inf', fmt(now - w[3]))
    if #old > 0 then
      local sum = 0
      for _, m in ipairs(old) do sum = sum + (tonumber(string.match(m, '|(.+)$')) or 0) end
      redis.call('ZREMRANGEBYSCORE', zk, '-inf', fmt(now - w[3]))
      redis.call('HINCRBYFLOAT', qk, w[2], -sum)
    end
  end
  local d = tonumber(redis.call('HGET', qk, 'd') or '')
  if d ~= day then redis.call('HSET', qk, 'd', fmt(day), 'rd', 0, 'td', 0) end
end
local function qhash(prefix, id)
  local raw = redis.call('HGETALL', prefix .. 'q:' .. id)
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  return h
end
-- the live announcement of window w (one past its reset starts the next period full,
-- tentatively, or is dropped), as {remaining, reset, limit, period, tentative} or nil
local function qann(prefix, id, h, w, now)
  local v = h['a:' .. w]
  if not v then return nil end
  local a = split(v)
  if now < a[2] then return a end
  local qk = prefix .. 'q:' .. id
  if a[3] > 0 and a[4] > 0 then
    a[1] = a[3]
    a[2] = a[2] + a[4] * math.ceil((now - a[2]) / a[4] + 1e-9)
    a[5] = 1
    redis.call('HSET', qk, 'a:' .. w, table.concat({fmt(a[1]), fmt(a[2]), fmt(a[3]), fmt(a[4]), a[5]}, '|'))
    h['a:' .. w] = nil
    return a
  end
  redis.call('HDEL', qk, 'a:' .. w)
  h['a:' .. w] = nil
  return nil
end
local function token_wait(zk, total, limit, cost, span, now)
  local need = math.min(cost, limit)
  if total + need <= limit then return 0 end
  local all = redis.call('ZRANGE', zk, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    total = total - (tonumber(string.match(all[i], '|(.+)$')) or 0)
    if total + need <= limit then return tonumber(all[i + 1]) + span - now end
  end
  return 0
end
-- 0 when one more request of `cost` tokens fits every window of the key now, else seconds
local function qwait(prefix, id, l, now, cost, dayend)
  local w = 0
  local h = qhash(prefix, id)
  for i, span in ipairs({60, 3600}) do
    if l[i] > 0 then
      local zk = prefix .. (i == 1 and 'qm:' or 'qh:') .. id
      local n = redis.call('ZCARD', zk)
      if n >= l[i] then
        local t = redis.call('ZRANGE', zk, n - l[i], n - l[i], 'WITHSCORES')
        w = math.max(w, tonumber(t[2]) + span - now)
      end
    end
  end
  if l[3] > 0 and (tonumber(h.rd) or 0) >= l[3] then w = math.max(w, dayend - now) end
  if l[4] > 0 then
    w = math.max(w, token_wait(prefix .. 'tm:' .. id, tonumber(h.tms) or 0, l[4], cost, 60, now))
  end
  if l[5] > 0 then
    w = math.max(w, token_wait(prefix .. 'th:' .. id, tonumber(h.ths) or 0, l[5], cost, 3600, now))
  end
  if l[6] > 0 and (tonumber(h.td) or 0) + math.min(cost, l[6]) > l[6] then
    w = math.max(w, dayend - now)
  end
  for _, win in ipairs(QWIN) do
    local a = qann(prefix, id, h, win, now)
    if a then
      local need = string.sub(win, 1, 1) == 'r' and 1 or cost
      if a[3] > 0 then need = math.min(need, a[3]) end
      if a[1] < need then w = math.max(w, a[2] - now) end
    end
  end
  return w
end
-- when a window of the key has less than 10% of its limit left: when the soonest such resets
local function qsoon(prefix, id, l, now, dayend)
  local h = qhash(prefix, id)
  local soonest = nil
  local function oldest(zk, span)
    local t = redis.call('ZRANGE', zk, 0, 0, 'WITHSCORES')
    return t[2] and tonumber(t[2]) + span or now
  end
  local used = {
    redis.call('ZCARD', prefix .. 'qm:' .. id), redis.call('ZCARD', prefix .. 'qh:' .. id),
    tonumber(h.rd) or 0, tonumber(h.tms) or 0, tonumber(h.ths) or 0, tonumber(h.td) or 0,
  }
  for i = 1, 6 do
    if l[i] > 0 and l[i] - used[i] < l[i] * 0.1 then
      local reset = dayend
      if i == 1 then reset = oldest(prefix .. 'qm:' .. id, 60)
      elseif i == 2 then reset = oldest(prefix .. 'qh:' .. id, 3600)
      elseif i == 4 then reset = oldest(prefix .. 'tm:' .. id, 60)
      elseif i == 5 then reset = oldest(prefix .. 'th:' .. id, 3600) end
      if not soonest or reset < soonest then soonest = reset end
    end
  end
  for _, win in ipairs(QWIN) do
    local a = qann(prefix, id, h, win, now)
    if a and a[3] > 0 and a[1] < a[3] * 0.1 and (not soonest or a[2] < soonest) then
      soonest = a[2]
    end
  end
  return soonest
end
local function qexpire(prefix, id, dayend, now)
  local keep = math.ceil((math.max(dayend - now, 0) + 3600) * 1000)
  redis.call('PEXPIRE', prefix .. 'q:' .. id, keep)
  for _, k in ipairs({'qm:', 'tm:'}) do redis.call('PEXPIRE', prefix .. k .. id, 61000) end
  for _, k in ipairs({'qh:', 'th:'}) do redis.call('PEXPIRE', prefix .. k .. id, 3601000) end
end
-- charge one request of `cost` tokens, under the pick's unique id `uid`
local function qcharge(prefix, id, now, cost, uid, dayend)
  local qk = prefix .. 'q:' .. id
  redis.call('ZADD', prefix .. 'qm:' .. id, now, uid)
  redis.call('ZADD', prefix .. 'qh:' .. id, now, uid)
  local m = uid .. '|' .. cost
  redis.call('ZADD', prefix .. 'tm:' .. id, now, m)
  redis.call('ZADD', prefix .. 'th:' .. id, now, m)
  redis.call('HINCRBY', qk, 'rd', 1)
  redis.call('HINCRBY', qk, 'td', cost)
  redis.call('HINCRBYFLOAT', qk, 'tms', cost)
  redis.call('HINCRBYFLOAT', qk, 'ths', cost)
  local h = qhash(prefix, id)
  for _, win in ipairs(QWIN) do
    local v = h['a:' .. win]
    if v then
      local a = split(v)
      a[1] = a[1] - (string.sub(win, 1, 1) == 'r' and 1 or cost)
      redis.call('HSET', qk, 'a:' .. win, table.concat({fmt(a[1]), fmt(a[2]), fmt(a[3]), fmt(a[4]), a[5]}, '|'))
    end
  end
  qexpire(prefix, id, dayend, now)
end
