-- KEYS: pool keys. ARGV: now, prefix, day start, ids... -> one JSON object per id: the fleet's
-- windows of that key (m, h: requests in the last minute and hour; tms, ths: their tokens;
-- om, oh: the oldest of each; rd, td: the day's counters; a: announced budgets).
local now = now_s()
local prefix, day = ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  qtrim(prefix, id, now, day)
  local h = qhash(prefix, id)
  local om = redis.call('ZRANGE', prefix .. 'qm:' .. id, 0, 0, 'WITHSCORES')
  local oh = redis.call('ZRANGE', prefix .. 'qh:' .. id, 0, 0, 'WITHSCORES')
  local ann = {}
  for _, win in ipairs(QWIN) do
    local a = qann(prefix, id, h, win, now)
    if a then ann[win] = a end
  end
  out[#out + 1] = cjson.encode({
    m = redis.call('ZCARD', prefix .. 'qm:' .. id),
    h = redis.call('ZCARD', prefix .. 'qh:' .. id),
    tms = tonumber(h.tms) or 0, ths = tonumber(h.ths) or 0,
    om = om[2] and tonumber(om[2]) or false, oh = oh[2] and tonumber(oh[2]) or false,
    rd = tonumber(h.rd) or 0, td = tonumber(h.td) or 0, a = ann,
  })
end
return out
