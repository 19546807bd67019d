-- One atomic check of a seller's token bucket for one scope (general, marketplace, jobs).
-- KEYS[1]  the bucket's hash
-- ARGV     op ('take' | 'penalize'), capacity, refill per ms, reserve, window ms, recovery step,
--          minimum factor, key ttl ms
-- Returns  {granted 0|1, wait ms, factor x 1000}
--
-- Redis's own clock (TIME) is used so replicas with skewed clocks still share one timeline.
local key = KEYS[1]
local op = ARGV[1]
local capacity = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local step = tonumber(ARGV[6])
local min_factor = tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local state = redis.call('HMGET', key, 'tokens', 'ts', 'factor', 'blocked_until', 'calm_since')
local factor = tonumber(state[3]) or 1
local ts = tonumber(state[2]) or now
local blocked_until = tonumber(state[4]) or 0
local calm_since = tonumber(state[5]) or now

-- Every full window without a 429 gives back one step of the rate.
if factor < 1 and now - calm_since >= window then
  local windows = math.floor((now - calm_since) / window)
  factor = math.min(1, factor + windows * step)
  calm_since = calm_since + windows * window
end
if factor >= 1 then
  calm_since = now
end

local cap = capacity * factor
local tokens = tonumber(state[1]) or cap
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate * factor)

local granted = 0
local wait = 0
if op == 'penalize' then
  -- CardTrader said 429: halve the rate and stay silent for the whole window.
  factor = math.max(min_factor, factor / 2)
  tokens = 0
  blocked_until = now + window
  calm_since = blocked_until
elseif now < blocked_until then
  wait = blocked_until - now
elseif tokens - 1 >= reserve then
  tokens = tokens - 1
  granted = 1
else
  wait = math.ceil((reserve + 1 - tokens) / (rate * factor))
end

redis.call('HSET', key, 'tokens', tokens, 'ts', now, 'factor', factor,
  'blocked_until', blocked_until, 'calm_since', calm_since)
redis.call('PEXPIRE', key, ttl)
return {granted, wait, math.floor(factor * 1000)}
