"""The Redis keys of a layer's hosts and the Lua scripts that use them.

Keys (``N`` is the namespace, ``shmch:<prefix>`` by default)::

    N:hosts           hash   host -> "<token> <lease end, ms>"   who is alive, and which instance
    N:inbox:<host>    list   messages for the host's processes (channels and groups)
    N:group:<group>   zset   host -> last renewal (ms): hosts with members of the group
    N:gchan:<group>   zset   cross-host named channel -> when added (ms): those members of the group
    N:chan:<channel>  list   a cross-host named channel (cross_host_channels)
    N:full:<host>:<ring key>  string  capacity; set (PX 1 s, refreshed) by the host's bridge while
                      that ring (the owner's ``prefix!``) is at its capacity

Every element of a list starts with its deadline (``wire``).  Each script
is one command (EVALSHA), so a cross-host send is one Redis operation and a
cross-host group send is one too, whatever the number of hosts and members:
inside it, one ZRANGEBYSCORE and one RPUSH per remote host with members.
Lease times come from Redis's clock (TIME), so hosts' clocks do not matter
for liveness; message deadlines are the sender's wall clock.
"""

import hashlib

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# Drop expired messages at the head of a full list; is there room for one more?
_ROOM = """
local function room(key, cap, now)
  local n = redis.call('LLEN', key)
  while n >= cap do
    local head = redis.call('LINDEX', key, 0)
    if not head or tonumber(string.sub(head, 1, 13)) >= now then break end
    redis.call('LPOP', key)
    n = n - 1
  end
  return n < cap
end
"""

_LEASE_END = """
local function lease_end(claim)
  if not claim then return nil end
  local sp = string.find(claim, ' ')
  return string.sub(claim, 1, sp - 1), tonumber(string.sub(claim, sp + 1))
end
"""

#: KEYS hosts; ARGV host, token, lease ms -> {1} ours, or {0, other token, ms left of its lease}
CLAIM = _NOW + _LEASE_END + """
local token, ends = lease_end(redis.call('HGET', KEYS[1], ARGV[1]))
if token and token ~= ARGV[2] and ends > now then return {0, token, ends - now} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
return {1}
"""

#: KEYS hosts; ARGV host, token -> 1 if the claim was ours and is gone
RELEASE = _LEASE_END + """
local token = lease_end(redis.call('HGET', KEYS[1], ARGV[1]))
if token == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
return 0
"""

#: KEYS hosts, inbox[, the ring's full marker]; ARGV host, element, inbox capacity, ttl ms
#: -> 1 sent, 0 the inbox is full, {0, ring capacity} the ring is full on its host, -1 no such live host
#: (memberships pass no marker: a group_add to a full channel is made, as on one host)
SEND_TO_HOST = _NOW + _ROOM + _LEASE_END + """
local _, ends = lease_end(redis.call('HGET', KEYS[1], ARGV[1]))
if not ends or ends < now then return -1 end
if KEYS[3] then
  local capacity = redis.call('GET', KEYS[3])
  if capacity then return {0, capacity} end
end
if not room(KEYS[2], tonumber(ARGV[3]), now) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

#: KEYS channel list; ARGV element, capacity, ttl ms -> 1 sent, 0 full
SEND_SHARED = _NOW + _ROOM + """
if not room(KEYS[1], tonumber(ARGV[2]), now) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

#: KEYS group zset, group's cross-host channels zset, hosts; ARGV own host, element, lease ms,
#: inbox key prefix, inbox capacity, ttl ms, channel key prefix, channel capacity, group_expiry ms
#: -> {hosts and channels sent to, those that were full}
GROUP_SEND = _NOW + _ROOM + _LEASE_END + """
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - lease))
local sent, full = 0, 0
local function push(key, capacity)
  if room(key, capacity, now) then
    redis.call('RPUSH', key, ARGV[2])
    redis.call('PEXPIRE', key, ARGV[6])
    sent = sent + 1
  else
    full = full + 1
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[9])))
  for _, channel in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    push(ARGV[7] .. channel, tonumber(ARGV[8]))
  end
end
for _, host in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local _, ends = lease_end(redis.call('HGET', KEYS[3], host))
  if host ~= ARGV[1] and ends and ends >= now then  -- a host that left has released its claim
    push(ARGV[4] .. host, tonumber(ARGV[5]))
  end
end
return {sent, full}
"""

#: KEYS group zsets; ARGV host, key ttl ms: the host has members of each group (now)
ADVERTISE = _NOW + """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, ARGV[2])
end
return #KEYS
"""

#: KEYS group's cross-host channels zset; ARGV channel, key ttl ms (0: discard)
SHARED_MEMBER = _NOW + """
if ARGV[2] == '0' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: KEYS group zsets; ARGV host: the host has no members of these groups any more
WITHDRAW = """
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return #KEYS
"""

#: ARGV namespace: delete the layer's keys but the hosts' claims (flush)
FLUSH = """
local pattern = string.gsub(ARGV[1], '[%*%?%[%]\\\\]', '\\\\%0') .. ':*'
local n = 0
for _, key in ipairs(redis.call('KEYS', pattern)) do
  if key ~= ARGV[1] .. ':hosts' then redis.call('DEL', key) n = n + 1 end
end
return n
"""

ALL = {name: source for name, source in globals().items() if name.isupper() and isinstance(source, str)
       and not name.startswith("_")}
SHA = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in ALL.items()}


class Keys:
    """The key names of one namespace."""

    def __init__(self, namespace):
        self.namespace = namespace
        self.hosts = f"{namespace}:hosts"
        self.inbox_prefix = f"{namespace}:inbox:"
        self.channel_prefix = f"{namespace}:chan:"

    def inbox(self, host):
        return self.inbox_prefix + host

    def group(self, group):
        return f"{self.namespace}:group:{group}"

    def group_channels(self, group):
        return f"{self.namespace}:gchan:{group}"

    def channel(self, channel):
        return self.channel_prefix + channel

    def full(self, host, ring_key):
        """The marker saying ring ``ring_key`` (``names.ring_key``) of ``host`` is full."""
        return f"{self.namespace}:full:{host}:{ring_key}"


def evalsha(name, keys, args):
    """The command tuple that runs script ``name``."""
    return ("EVALSHA", SHA[name], len(keys), *keys, *args)
