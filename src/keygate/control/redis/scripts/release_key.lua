-- KEYS: pool keys. ARGV: now, prefix, id, event (ok|rl|inv|exh|cool|dis|none), until, lease id,
-- cooldown_s, exhausted_cooldown_s, recheck_interval_s, channel, provider, error, window,
-- then the quota's word: the pick's time ('' = none), its id, tokens charged, tokens used,
-- day start, day end, other tries in flight on the key, then (window, remaining, reset,
-- limit) of each budget the answer announced.
-- -> {''} | {'state', status, until, strikes} | {'guard', pause, '', restored ids...}
local now = now_s()
local prefix, id, ev = ARGV[2], ARGV[3], ARGV[4]
local untl = tonumber(ARGV[5])
if ARGV[6] ~= '' then redis.call('ZREM', prefix .. 'c:' .. id, ARGV[6]) end
if #ARGV >= 20 then
  local day, dayend = tonumber(ARGV[18]), tonumber(ARGV[19])
  local est = tonumber(ARGV[16]) or 0
  qtrim(prefix, id, now, day)
  local qk = prefix .. 'q:' .. id
  if ARGV[14] ~= '' then
    -- the answer's usage replaces the estimate charged at the pick
    local at, uid, used = tonumber(ARGV[14]), ARGV[15], tonumber(ARGV[17]) or est
    local delta = used - est
    if delta ~= 0 then
      for _, w in ipairs({{'tm:', 'tms'}, {'th:', 'ths'}}) do
        local zk = prefix .. w[1] .. id
        if redis.call('ZREM', zk, uid .. '|' .. est) == 1 then
          redis.call('ZADD', zk, at, uid .. '|' .. used)
          redis.call('HINCRBYFLOAT', qk, w[2], delta)
        end
      end
      if at >= day then
        local td = (tonumber(redis.call('HGET', qk, 'td') or '0') or 0) + delta
        redis.call('HSET', qk, 'td', math.max(0, td))
      end
      local h = qhash(prefix, id)
      for _, win in ipairs({'tpm', 'tph', 'tpd'}) do
        local v = h['a:' .. win]
        if v then
          local a = split(v)
          if a[5] == 0 then
            a[1] = a[1] - delta
            redis.call('HSET', qk, 'a:' .. win,
              table.concat({fmt(a[1]), fmt(a[2]), fmt(a[3]), fmt(a[4]), a[5]}, '|'))
          end
        end
      end
    end
  end
  -- announced budgets: the lower of what was known and what the answer says (less the tries
  -- still in flight that it may not have counted) holds until its reset
  local others = tonumber(ARGV[20]) or 0
  local h = nil
  for i = 21, #ARGV - 3, 4 do
    if not h then h = qhash(prefix, id) end
    local win, rem, reset, limit = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
      tonumber(ARGV[i + 3])
    local held = 0
    if others > 0 then held = string.sub(win, 1, 1) == 'r' and others or others * est end
    rem = rem - held
    local old = qann(prefix, id, h, win, now)
    if old and old[5] == 0 and old[1] <= rem and reset <= old[2] + 0.5 then
      if limit > 0 then
        old[3] = limit
        redis.call('HSET', qk, 'a:' .. win,
          table.concat({fmt(old[1]), fmt(old[2]), fmt(old[3]), fmt(old[4]), old[5]}, '|'))
      end
    else
      redis.call('HSET', qk, 'a:' .. win, table.concat({fmt(rem), fmt(reset), fmt(limit),
        fmt(math.max(0, reset - now)), 0}, '|'))
    end
    redis.call('HSET', QON, id, 1)
  end
  qexpire(prefix, id, dayend, now)
end
if ev == 'ok' then
  redis.call('HDEL', STRIKES, id)
  redis.call('HSET', GUARD, 'ok', now)
  redis.call('PEXPIRE', GUARD, 3600000)
  return {''}
end
local channel, provider, err = ARGV[10], ARGV[11], ARGV[12]
if ev == 'rl' then
  local window = tonumber(ARGV[13])
  redis.call('ZADD', G429, now, id)
  local last_ok = tonumber(redis.call('HGET', GUARD, 'ok') or '0') or 0
  redis.call('ZREMRANGEBYSCORE', G429, '-inf', '(' .. fmt(math.max(now - window, last_ok)))
  redis.call('PEXPIRE', G429, math.ceil(window * 1000) + 1000)
  local eligible = redis.call('HLEN', ST)
  if eligible >= 2 and redis.call('ZCARD', G429) >= math.min(3, eligible) then
    -- every recent try across several keys was refused: the provider is saturated, not
    -- these keys. Pause the provider for the whole fleet; keep the keys active.
    local ids = redis.call('ZRANGE', G429, 0, -1)
    redis.call('DEL', G429)
    local out = {'guard', '', ''}
    for _, k in ipairs(ids) do
      local v = redis.call('HGET', ST, k)
      if v and code_of(v) == 'c' then
        place(k, 'a', 0)
        table.insert(out, k)
      end
    end
    local pause = now + math.min(tonumber(ARGV[7]), 5)
    if untl and untl > now then pause = untl end
    local cur = tonumber(redis.call('HGET', ADM, 'pause') or '0') or 0
    if pause > cur then
      redis.call('HSET', ADM, 'pause', pause)
      redis.call('PEXPIRE', ADM, 3600000)
    end
    out[2] = fmt(pause)
    local restored = {}
    for i = 4, #out do restored[#restored + 1] = tonumber(out[i]) end
    redis.call('PUBLISH', channel, cjson.encode({t = 'guard', p = provider, pause = fmt(pause),
      ids = restored}))
    return out
  end
  if redis.call('HGET', ST, id) ~= 'a' then
    redis.call('PUBLISH', channel, cjson.encode({t = '429', p = provider}))
    return {''}
  end
  local strikes = redis.call('HINCRBY', STRIKES, id, 1)
  if not untl or untl <= now then
    untl = now + tonumber(ARGV[7]) * 2 ^ math.min(strikes - 1, 4)
  end
  place(id, 'c', untl)
  announce(channel, provider, id, 'c', untl, err, strikes)
  return {'state', 'cooling', fmt(untl), tostring(strikes)}
end
if ev == 'inv' or ev == 'exh' then
  local v = redis.call('HGET', ST, id)
  if not v or v == 'd' then return {''} end
  local code, hold = 'i', tonumber(ARGV[9])
  if ev == 'exh' then code, hold = 'x', tonumber(ARGV[8]) end
  untl = now + hold
  place(id, code, untl)
  announce(channel, provider, id, code, untl, err, nil)
  return {'state', NAMES[code], fmt(untl), '0'}
end
-- an error rule's word: cooling until its time (no strike, not the guard's), or disabled
if ev == 'cool' then
  local v = redis.call('HGET', ST, id)
  if not v or (v ~= 'a' and code_of(v) ~= 'c') then return {''} end
  if not untl or untl <= now then untl = now + tonumber(ARGV[7]) end
  place(id, 'c', untl)
  announce(channel, provider, id, 'c', untl, err, nil)
  return {'state', 'cooling', fmt(untl), redis.call('HGET', STRIKES, id) or '0'}
end
if ev == 'dis' then
  local v = redis.call('HGET', ST, id)
  if not v or v == 'd' then return {''} end
  place(id, 'd', 0)
  announce(channel, provider, id, 'd', 0, err, nil)
  return {'state', 'disabled', '0', '0'}
end
return {''}
