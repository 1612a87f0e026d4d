"""The leader lock on Redis: a key holding "<token>|<holder>" with a PX lease, changed only by Lua.

Each new holder takes its fencing token from an INCR counter, so a later leader always has a larger token;
renewal and release act only for the current holder. Callers turn Redis errors into `Unavailable`.
"""

from __future__ import annotations

import redis

# KEYS: lock, fence counter; ARGV: holder, lease ms.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local token, holder = string.match(cur, '^(%d+)|(.*)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
"""
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^%d+|(.*)$') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^%d+|(.*)$') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLocks:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def _keys(self, name: str) -> list[str]:
        key = self._prefix + "lock:" + name
        return [key, key + ":fence"]

    def acquire(self, name: str, holder: str, lease_ms: int) -> int | None:
        """The holder's token (a new one unless it already holds the lock), or None if another holds it."""
        token = self._acquire(keys=self._keys(name), args=[holder, lease_ms])
        return None if token is None else int(token)

    def renew(self, name: str, holder: str, lease_ms: int) -> bool:
        return bool(self._renew(keys=self._keys(name), args=[holder, lease_ms]))

    def release(self, name: str, holder: str) -> None:
        self._release(keys=self._keys(name)[:1], args=[holder])
