"""The registry's Lua scripts, one copy each: every change to a cluster's keys is one of them,
atomic in Redis. Each takes the cluster's keys as KEYS, in ClusterKeys order (ddg.registry.keys):
members, version, events, id, removed, timing, timing_seen, version_seen, term_floor."""

from __future__ import annotations

# Read everything in one round trip, with the key types, so that a key of the wrong type is a
# clear registry problem rather than a script error; with ARGV[1] (a name), that member's
# confirmation too.
READ = """
local mt = redis.call('TYPE', KEYS[1])['ok']
local vt = redis.call('TYPE', KEYS[2])['ok']
local it = redis.call('TYPE', KEYS[4])['ok']
local members, v, id, floor, mine = {}, false, false, false, false
if mt == 'hash' then members = redis.call('HGETALL', KEYS[1]) end
if vt == 'string' then v = redis.call('GET', KEYS[2]) end
if it == 'string' then id = redis.call('GET', KEYS[4]) end
if redis.call('TYPE', KEYS[9])['ok'] == 'string' then floor = redis.call('GET', KEYS[9]) end
if ARGV[1] and ARGV[1] ~= '' and redis.call('TYPE', KEYS[8])['ok'] == 'hash' then
  mine = redis.call('HGET', KEYS[8], ARGV[1])
end
return {mt, vt, it, v, id, members, floor, mine}
"""


# The prefix "VERSION:MEMBERS:" of a confirmation of the current version by one of NAMES,
# the current members (MEMBERS: the members_hash of their names), and the VERSION.
CURRENT = """
local function current(names)
  local v = redis.call('GET', KEYS[2]) or '0'
  local sum = 0
  for _, n in ipairs(names) do
    sum = sum + tonumber(string.sub(redis.sha1hex(n), 1, 10), 16)
  end
  return v .. ':' .. string.format('%d', sum) .. ':', v
end
"""

# The one rule every change to the set of names passes (docs/design.md, "One change at a
# time is safe"): a majority of the current members have confirmed the current version
# ("VERSION:MEMBERS:TERM" in KEYS[8]). The change then raises the term floor (KEYS[9]) to
# the highest TERM among those confirmations.
# Returns nil when the change may go, else the reply: {-5, version, member count, names of
# the members that have not confirmed it}.
GATE = CURRENT + """
local function gate()
  local flat, names = redis.call('HGETALL', KEYS[1]), {}
  for i = 1, #flat, 2 do names[#names + 1] = flat[i] end
  if #names == 0 then return nil end
  local want, v = current(names)
  local have, top, missing = 0, 0, {}
  for _, n in ipairs(names) do
    local c = redis.call('HGET', KEYS[8], n)
    if c and string.sub(c, 1, #want) == want then
      have = have + 1
      local t = tonumber(string.sub(c, #want + 1)) or 0
      if t > top then top = t end
    else
      missing[#missing + 1] = n
    end
  end
  if have * 2 <= #names then return {-5, v, #names, unpack(missing)} end
  if top > (tonumber(redis.call('GET', KEYS[9]) or '0') or 0) then
    redis.call('SET', KEYS[9], string.format('%d', top))
  end
  return nil
end
"""


# KEYS: members, version, events, id, removed, timing, timing_seen, version_seen, term_floor.
# ARGV: name, entry, node_id, address, cluster id the node already belongs to (or ''), max
# members. The reply carries the timing record as it was at the add: a node runs on nothing
# older. A new name (not a move of a member's data dir) passes the gate. A data dir that was
# removed (its node id has a tombstone) is refused: removed means removed.
ADD = GATE + """
local id = redis.call('GET', KEYS[4])
if not id then return {-2, ''} end
if ARGV[5] ~= '' and id ~= ARGV[5] then return {-3, id} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, obj = pcall(cjson.decode, cur)
  local mine = ok and type(obj) == 'table' and (obj['node_id'] == ARGV[3]
      or (obj['node_id'] == nil and obj['address'] == ARGV[4]))
  if not mine then return {-1, cur} end
  if obj['address'] == ARGV[4] and obj['node_id'] == ARGV[3] then
    return {0, redis.call('GET', KEYS[2]) or '0', id, redis.call('GET', KEYS[6])}
  end
  -- the same data dir at a new address (the node moved), or a pre-identity entry: adopt it
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  local v = redis.call('INCR', KEYS[2])
  redis.call('PUBLISH', KEYS[3], cjson.encode({op='move', name=ARGV[1], version=v}))
  return {1, tostring(v), id, redis.call('GET', KEYS[6])}
end
if ARGV[3] ~= '' then
  local gone = redis.call('ZSCORE', KEYS[5], ARGV[3])
  if gone then return {-6, gone} end
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[6]) then return {-4, ''} end
local wait = gate()
if wait then return wait end
redis.call('HDEL', KEYS[7], ARGV[1])  -- another node's confirmations under this name
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='join', name=ARGV[1], version=v}))
return {1, tostring(v), id, redis.call('GET', KEYS[6])}
"""


# The one way a cluster comes to exist: a node started with --bootstrap, on a registry that
# holds no cluster id. Entries already there (a cluster from before cluster ids) are kept, and
# so is a timing record. ARGV: new cluster id, name, entry, timing record.
CREATE = """
local id = redis.call('GET', KEYS[4])
if id then return {0, id} end
redis.call('SET', KEYS[4], ARGV[1])
if not redis.call('GET', KEYS[6]) then redis.call('SET', KEYS[6], ARGV[4]) end
redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='create', name=ARGV[2], version=v}))
return {1, ARGV[1]}
"""


# A tombstone tells a member that finds itself missing that it was removed on purpose, not
# lost by a restore from a membership older than its join. ARGV: name, '1' to skip the gate
# (an operator's `--force`, for members that are down for good).
REMOVE = GATE + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  return {0, redis.call('GET', KEYS[2]) or '0'}
end
if ARGV[2] ~= '1' then
  local wait = gate()
  if wait then return wait end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
local v = redis.call('INCR', KEYS[2])
local ok, obj = pcall(cjson.decode, cur)
if ok and type(obj) == 'table' and type(obj['node_id']) == 'string' then
  redis.call('ZADD', KEYS[5], v, obj['node_id'])
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -101)
end
redis.call('PUBLISH', KEYS[3], cjson.encode({op='remove', name=ARGV[1], version=v}))
return {1, tostring(v)}
"""


# Redis lost its data (restarted empty, FLUSHALL) or went back in time (an old RDB), or its
# history forked (the same version with other members): put back the membership a node last
# knew, merged with what is there, under a version newer than both. ARGV: cluster id,
# snapshot version, force (1: the same version is a fork), then name/entry pairs.
RESTORE = """
local id = redis.call('GET', KEYS[4])
if id and id ~= ARGV[1] then return {-3, id} end
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
local snap = tonumber(ARGV[2])
if id and (cur > snap or (cur == snap and ARGV[3] ~= '1')) then return {0, tostring(cur)} end
for i = 4, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
local v = math.max(cur, snap) + 1
redis.call('SET', KEYS[2], string.format('%d', v))
redis.call('SET', KEYS[4], ARGV[1])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='restore', version=v}))
return {1, string.format('%d', v)}
"""


# A member confirms the membership it runs (ARGV[2], "VERSION:MEMBERS:TERM"); only a member.
CONFIRM_VERSION = """
if not redis.call('HGET', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[8], ARGV[1], ARGV[2])
return 1
"""


# The timing record with its confirmations and the members' names, in one round trip.
READ_TIMING = """
local tt = redis.call('TYPE', KEYS[6])['ok']
local st = redis.call('TYPE', KEYS[7])['ok']
local mt = redis.call('TYPE', KEYS[1])['ok']
local rec, seen, names = false, {}, {}
if tt == 'string' then rec = redis.call('GET', KEYS[6]) end
if st == 'hash' then seen = redis.call('HGETALL', KEYS[7]) end
if mt == 'hash' then
  local flat = redis.call('HGETALL', KEYS[1])
  for i = 1, #flat, 2 do names[#names + 1] = flat[i] end
end
return {tt, st, mt, rec, seen, names}
"""


# Write a timing record over the one the caller read (ARGV[1], '' for none), or nothing if
# it changed since. ARGV: expected, new record, new epoch, 1 if the cluster must exist.
PUT_TIMING = """
if ARGV[4] == '1' and not redis.call('GET', KEYS[4]) then return {-2} end
local cur = redis.call('GET', KEYS[6]) or ''
if cur ~= ARGV[1] then return {0, cur} end
redis.call('SET', KEYS[6], ARGV[2])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='timing', epoch=tonumber(ARGV[3])}))
return {1}
"""


# A member confirms the record whose fingerprint is ARGV[2] (ARGV[1]: its name; '' to only
# try the next step); then, if the record is still ARGV[3], every member has confirmed it and
# every member has confirmed the current membership version too (a member confirms a version
# only a lease wait after it adopted it, so a member removed meanwhile holds no lease under
# the old timing any more: docs/design.md, "Timing is cluster state"), it becomes ARGV[4]
# (its target alone). Replies 1 when it did, else 0 and who has not.
CONFIRM = CURRENT + """
if ARGV[1] ~= '' then redis.call('HSET', KEYS[7], ARGV[1], ARGV[2]) end
if ARGV[4] == '' or not redis.call('GET', KEYS[4]) then return {0} end
if redis.call('GET', KEYS[6]) ~= ARGV[3] then return {0} end
local flat, names = redis.call('HGETALL', KEYS[1]), {}
for i = 1, #flat, 2 do names[#names + 1] = flat[i] end
if #names == 0 then return {0} end
local want = current(names)
local missing = {0}
for _, n in ipairs(names) do
  local c = redis.call('HGET', KEYS[8], n)
  if redis.call('HGET', KEYS[7], n) ~= ARGV[2] or not c or string.sub(c, 1, #want) ~= want then
    missing[#missing + 1] = n
  end
end
if #missing > 1 then return missing end
redis.call('SET', KEYS[6], ARGV[4])
redis.call('PUBLISH', KEYS[3], cjson.encode({op='timing', epoch=tonumber(ARGV[5])}))
return {1}
"""


# Deletes a cluster's keys only when it has no member left (none of ours, nobody else's): for
# a supervisor leaving an external Redis as it found it.
DROP_EMPTY_CLUSTER = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HLEN', KEYS[1]) > 0 then return -1 end
return redis.call('DEL', unpack(KEYS))
"""
