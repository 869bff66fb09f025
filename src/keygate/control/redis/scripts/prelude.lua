-- Included first in every script. ARGV[1] is always "now": empty in production (Redis
-- TIME, one clock for the fleet); tests pass a time to make the arithmetic exact.
local function now_s()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
