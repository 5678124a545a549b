"""The Lua scripts that keep one breaker's fleet-wide state atomic on Redis.

Every script reads the time with ``TIME`` inside Redis, so every timing
decision (open until, lease expiry, window buckets) uses the server's clock,
never a host's. Each script touches only the keys of one breaker, which share
one ``{namespace:name}`` hash tag and so one Redis Cluster slot.

Keys of a breaker (``KEYS``): 1 the state hash (``state``, ``version``,
``open_until`` in server milliseconds, ``reason``, and ``manual``: an
operator's fleet-wide ``forced_open`` or ``disabled``), 2 the window (a hash of
time buckets, or a string of outcome codes for count windows), 3 the probe
leases (a sorted set of lease ids scored by their expiry).

A version is ``max(previous + 1, server milliseconds)``: it grows with every
change, and keeps growing across a flush or a restart, so a process that
missed a message catches the change on its next read.

Every script answers ``{state, version, open_until, now, manual, reason}``,
and every message on the namespace's channel carries the same as JSON
(``s``, ``v``, ``u``, ``t``, ``m``, ``r``, plus ``n`` the breaker's name).
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "CLOSE", "MANUAL", "OPEN", "READ", "RECORD"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function announce(name, channel, state, version, open_until, manual, reason)
  redis.call('PUBLISH', channel, cjson.encode({n = name, s = state, v = version, u = open_until, t = now,
                                               m = manual, r = reason}))
  return {state, version, open_until, now, manual, reason}
end
"""

# Opens the breaker; expects `now` and ARGV[1..4] = timeout ms, key ttl ms, channel, name.
_OPEN_BODY = """
local function open_breaker(timeout_ms, reason)
  local manual = redis.call('HGET', KEYS[1], 'manual') or ''
  local version = math.max(tonumber(redis.call('HGET', KEYS[1], 'version') or '0') + 1, now)
  local open_until = now + timeout_ms
  redis.call('HSET', KEYS[1], 'state', 'open', 'version', string.format('%d', version),
             'open_until', string.format('%d', open_until), 'reason', reason)
  if manual == '' then redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), timeout_ms * 2)) end
  redis.call('DEL', KEYS[2], KEYS[3])
  return announce(ARGV[4], ARGV[3], 'open', version, open_until, manual, reason)
end
"""

READ = _NOW + """
local st = redis.call('HMGET', KEYS[1], 'state', 'version', 'open_until', 'manual', 'reason')
return {st[1] or 'closed', tonumber(st[2] or '0'), tonumber(st[3] or '0'), now, st[4] or '', st[5] or ''}
"""

# ARGV: timeout ms, key ttl ms, channel, name, reason.
OPEN = _NOW + _OPEN_BODY + """
return open_breaker(tonumber(ARGV[1]), ARGV[5])
"""

# Closes the breaker unless another process changed it since the caller's
# version (compare and set: a fleet reopened by another prober stays open).
# ARGV: expected version, key ttl ms, channel, name.
CLOSE = _NOW + """
local st = redis.call('HMGET', KEYS[1], 'state', 'version', 'open_until', 'manual', 'reason')
local version = tonumber(st[2] or '0')
if not st[1] or st[1] == 'closed' or version ~= tonumber(ARGV[1]) then
  return {st[1] or 'closed', version, tonumber(st[3] or '0'), now, st[4] or '', st[5] or ''}
end
version = math.max(version + 1, now)
redis.call('HSET', KEYS[1], 'state', 'closed', 'version', string.format('%d', version), 'open_until', '0',
           'reason', 'probe_success')
if (st[4] or '') == '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('DEL', KEYS[2], KEYS[3])
return announce(ARGV[4], ARGV[3], 'closed', version, 0, st[4] or '', 'probe_success')
"""

# An operator's fleet-wide action: ARGV 1 'forced_open', 'disabled' or 'reset', 2 key ttl ms,
# 3 channel, 4 name. A manual state lasts until a reset (the key does not expire meanwhile);
# a reset also closes the breaker and forgets the fleet's window and probes.
MANUAL = _NOW + """
local version = math.max(tonumber(redis.call('HGET', KEYS[1], 'version') or '0') + 1, now)
if ARGV[1] == 'reset' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'version', string.format('%d', version), 'open_until', '0',
             'reason', 'reset')
  redis.call('HDEL', KEYS[1], 'manual')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
  return announce(ARGV[4], ARGV[3], 'closed', version, 0, '', 'reset')
end
local reason = ARGV[1] == 'forced_open' and 'force_open' or 'disable'
redis.call('HSET', KEYS[1], 'version', string.format('%d', version), 'manual', ARGV[1], 'reason', reason)
redis.call('PERSIST', KEYS[1])
local st = redis.call('HMGET', KEYS[1], 'state', 'open_until')
return announce(ARGV[4], ARGV[3], st[1] or 'closed', version, tonumber(st[2] or '0'), ARGV[1], reason)
"""

# Adds a batch of closed-state outcomes to the fleet's window and applies the
# rate rules to it; opens the breaker when one fires.
# ARGV: 1 timeout ms, 2 key ttl ms, 3 channel, 4 name, 5 kind ('t' time, 'c' count),
# 6 window (ms or calls), 7 bucket width ms, 8 minimum calls, 9 failure rate (0: off),
# 10 slow rate (0: off), 11 calls, 12 failures, 13 slow calls, 14 outcome codes (count windows:
# one character per call, '0' + 1 if failed + 2 if slow).
RECORD = _NOW + _OPEN_BODY + """
local st = redis.call('HMGET', KEYS[1], 'state', 'version', 'open_until', 'manual', 'reason')
local version = tonumber(st[2] or '0')
if (st[1] and st[1] ~= 'closed') or (st[4] or '') ~= '' then
  return {st[1] or 'closed', version, tonumber(st[3] or '0'), now, st[4] or '', st[5] or ''}
end
local total, failed, slow = 0, 0, 0
local window = tonumber(ARGV[6])
if ARGV[5] == 't' then
  local width = tonumber(ARGV[7])
  local bucket = math.floor(now / width)
  local oldest = bucket - math.ceil(window / width) + 1
  local calls, failures, slows = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
  if calls > 0 then redis.call('HINCRBY', KEYS[2], 't' .. bucket, calls) end
  if failures > 0 then redis.call('HINCRBY', KEYS[2], 'f' .. bucket, failures) end
  if slows > 0 then redis.call('HINCRBY', KEYS[2], 's' .. bucket, slows) end
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local field = fields[i]
    if tonumber(string.sub(field, 2)) < oldest then
      redis.call('HDEL', KEYS[2], field)
    else
      local kind, n = string.sub(field, 1, 1), tonumber(fields[i + 1])
      if kind == 't' then total = total + n elseif kind == 'f' then failed = failed + n else slow = slow + n end
    end
  end
  redis.call('PEXPIRE', KEYS[2], window + width)
else
  local codes = (redis.call('GET', KEYS[2]) or '') .. ARGV[14]
  if #codes > window then codes = string.sub(codes, #codes - window + 1) end
  redis.call('SET', KEYS[2], codes, 'PX', ARGV[2])
  total = #codes
  for i = 1, total do
    local code = string.byte(codes, i) - 48
    if code % 2 == 1 then failed = failed + 1 end
    if code >= 2 then slow = slow + 1 end
  end
end
if total > 0 and total >= tonumber(ARGV[8]) then
  local failure_rate, slow_rate = tonumber(ARGV[9]), tonumber(ARGV[10])
  if failure_rate > 0 and failed / total >= failure_rate then
    return open_breaker(tonumber(ARGV[1]), 'failure_rate')
  end
  if slow_rate > 0 and slow / total >= slow_rate then
    return open_breaker(tonumber(ARGV[1]), 'slow_call_rate')
  end
end
return {'closed', version, 0, now, '', st[5] or ''}
"""

# Takes a half-open probe lease if fewer than the maximum are live; expired
# leases (a prober that crashed) are dropped first. ARGV: lease id, lease ms, max.
ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""
