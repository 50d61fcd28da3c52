"""The Lua script of the Redis store and the names of its keys (see :mod:`health.redis_store`).

One call of :data:`SCRIPT` per deployment per flush applies this replica's batches, publishes
its breaker trip (if any), refreshes expiry, writes its in-flight gauge and returns the fleet
view; every key it touches shares the deployment's hash tag, :func:`key_tag`, so the call stays
in one Redis Cluster slot.
"""

from __future__ import annotations

KEY_PREFIX = "llmgw"


def key_tag(namespace: str, name: str) -> str:
    """The common prefix of every key of deployment ``name``: ``llmgw:{namespace:name}``."""
    return f"{KEY_PREFIX}:{{{namespace}:{name}}}"


# KEYS: 1 this replica's seq, 2 in-flight hash, 3 probe list, 4 trip string, then bucket hashes
# (the first ARGV[9] of them are the live window, read back in order). ARGV: 1 replica,
# 2 in-flight count, 3 order stamp (increasing per exchange), 4 in-flight max age (ms),
# 5 bucket/seq ttl (ms), 6 in-flight ttl (ms), 7 probe ttl (ms), 8 probe history, 9 buckets to
# read, 10 highest seq sent ("0": none), 11 batch count, 12 trip value "until_ms|replica|reason"
# ("": none), 13 its until_ms, 14 its ttl (ms, > 0), then per batch: seq, probe count, probe JSON
# (oldest first), bucket count, and per bucket: its KEYS position, field count, then field/delta
# pairs. Returns {buckets, others' in-flight, probes, applied, skipped, trip value or nil}.
SCRIPT = """
for i = 1, #KEYS do
  local want = ((i == 1 or i == 4) and 'string') or (i == 3 and 'list') or 'hash'
  local got = redis.call('TYPE', KEYS[i])['ok']
  if got ~= 'none' and got ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. got .. ', not a ' .. want)
  end
end
local me = ARGV[1]
local seen = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[10]) > seen then
  redis.call('SET', KEYS[1], ARGV[10], 'PX', ARGV[5])
end
if ARGV[12] ~= '' then
  local held = redis.call('GET', KEYS[4])
  local held_until = held and tonumber(string.match(held, '^(%d+)|')) or -1
  if tonumber(ARGV[13]) > held_until then
    redis.call('SET', KEYS[4], ARGV[12], 'PX', ARGV[14])
  end
end
local applied, skipped = 0, 0
local touched, pushed = {}, false
local a = 15
for _ = 1, tonumber(ARGV[11]) do
  local fresh = tonumber(ARGV[a]) > seen
  if fresh then
    applied = applied + 1
  else
    skipped = skipped + 1
  end
  local np = tonumber(ARGV[a + 1])
  a = a + 2
  if fresh then
    for i = a, a + np - 1 do
      redis.call('LPUSH', KEYS[3], ARGV[i])
      pushed = true
    end
  end
  a = a + np
  local nb = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, nb do
    local k, nf = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    if fresh and nf > 0 then
      for i = a, a + 2 * nf - 1, 2 do
        redis.call('HINCRBYFLOAT', KEYS[k], ARGV[i], ARGV[i + 1])
      end
      touched[k] = true
    end
    a = a + 2 * nf
  end
end
for k in pairs(touched) do
  redis.call('PEXPIRE', KEYS[k], ARGV[5])
end
if pushed then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
local t = redis.call('TIME')
local now_s = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local now = tonumber(now_s)
local mine = redis.call('HGET', KEYS[2], me)
local mine_order = mine and tonumber(string.match(mine, ':(%d+)$')) or -1
if tonumber(ARGV[3]) >= mine_order then
  redis.call('HSET', KEYS[2], me, ARGV[2] .. ':' .. now_s .. ':' .. ARGV[3])
end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local others = 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local c, at = string.match(entries[i + 1], '^(%-?%d+):(%d+):%d+$')
  if not c or now - tonumber(at) > tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[2], entries[i])
  elseif entries[i] ~= me then
    others = others + tonumber(c)
  end
end
local buckets = {}
for j = 1, tonumber(ARGV[9]) do
  buckets[j] = redis.call('HGETALL', KEYS[4 + j])
end
local probes = redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[8]) - 1)
return {buckets, others, probes, applied, skipped, redis.call('GET', KEYS[4])}
"""
