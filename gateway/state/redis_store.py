"""`redis://host:port/db` and `rediss://` (TLS): a state store shared by several gateways.

Redis or Valkey, through the `redis` package's asyncio client, so the event loop never
waits on the network; every call is bounded by `TIMEOUT_S`, after which it is a 503.
An object is one string key whose server-side expiry is the TTL, so Redis forgets it
on its own. The bounds on count and bytes need bookkeeping that all gateways share:
sorted sets of every object in the order it was put (and one per kind, for the count
bounds) and by expiry, and a hash of sizes with a running total, all changed by one Lua script per
write, so concurrent gateways never see a half-made change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.state.base import StateUnavailable, Store, decoded, versioned

TIMEOUT_S = 3.0
PREFIX = "nexa:state:"

# Shared by put and delete: `drop(key)` forgets an object and its bookkeeping.
_DROP = """
local p = ARGV[1]
local function drop(key)
  local size = redis.call('HGET', p .. 'sizes', key)
  redis.call('DEL', key)
  if not size then return 0 end
  local kind = string.match(string.sub(key, #p + 5), '^([^/]*)/')
  redis.call('HDEL', p .. 'sizes', key)
  redis.call('ZREM', p .. 'order', key)
  redis.call('ZREM', p .. 'expiry', key)
  redis.call('ZREM', p .. 'kind:' .. kind, key)
  redis.call('DECRBY', p .. 'bytes', size)
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(redis.call('ZRANGEBYSCORE', p .. 'expiry', '-inf', now)) do drop(key) end
"""

# ARGV: prefix, key, kind, value, ttl_ms, max_count (-1: none), max_bytes, version ("": any) -> 1, or 0
# when a version was given and the live object's bytes no longer have it (`replace`)
PUT = _DROP + """
local key, kind, value = ARGV[2], ARGV[3], ARGV[4]
local ttl, max_count, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if ARGV[8] ~= '' then
  local seen = redis.call('GET', key)
  if not seen or redis.sha1hex(seen) ~= ARGV[8] then return 0 end
end
drop(key)
redis.call('SET', key, value, 'PX', ttl)
redis.call('HSET', p .. 'sizes', key, #value)
local seq = redis.call('INCR', p .. 'seq')
redis.call('ZADD', p .. 'order', seq, key)
redis.call('ZADD', p .. 'expiry', now + ttl, key)
redis.call('ZADD', p .. 'kind:' .. kind, seq, key)
redis.call('INCRBY', p .. 'bytes', #value)
if max_count >= 0 then
  while redis.call('ZCARD', p .. 'kind:' .. kind) > max_count do
    drop(redis.call('ZRANGE', p .. 'kind:' .. kind, 0, 0)[1])
  end
end
while tonumber(redis.call('GET', p .. 'bytes') or '0') > max_bytes do
  local oldest = redis.call('ZRANGE', p .. 'order', 0, 0)[1]
  if not oldest then break end
  drop(oldest)
end
return 1
"""

# ARGV: prefix, key -> 1 when a live object was deleted
DELETE = _DROP + """
local live = redis.call('EXISTS', ARGV[2])
drop(ARGV[2])
return live
"""

# ARGV: prefix, kind -> live keys of the kind, oldest first (after forgetting the expired ones)
LIST = _DROP + """
return redis.call('ZRANGE', p .. 'kind:' .. ARGV[2], 0, -1)
"""

# ARGV: prefix -> {objects, bytes}
STATS = _DROP + """
return {redis.call('ZCARD', p .. 'order'), tonumber(redis.call('GET', p .. 'bytes') or '0')}
"""


def _tls_failure(exc: BaseException) -> str | None:
    """What failed in a TLS handshake, when that is why `exc` happened: redis-py wraps it in a ConnectionError
    whose text reads as if the server were down, and "unreachable" sends a user to the network, not the CA."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            hint = ("connect by a name the certificate has" if seen.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH
                    else "for a certificate from a private CA, name that CA in the URL: ?ssl_ca_certs=/path/ca.pem")
            return f"the server's certificate was not accepted ({seen.verify_message or seen.reason}); {hint}"
        if isinstance(seen, ssl.SSLError):
            return f"{type(seen).__name__} {seen.reason or seen} (is the port a TLS port?)"
        seen = seen.__cause__ or seen.__context__
    return None


class RedisStore(Store):
    scheme = "redis"

    def __init__(self, url: str, *args: Any, connect_url: str, **kwargs: Any):
        super().__init__(url, *args, **kwargs)
        self._connect_url = connect_url  # with its password: never shown, never logged
        self._client: Any = None
        self._scripts: dict[str, Any] = {}

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio  # the client is needed only by gateways configured for it

            self._client = redis.asyncio.Redis.from_url(
                self._connect_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                health_check_interval=30, retry_on_timeout=False)
            self._scripts = {name: self._client.register_script(source)
                             for name, source in (("put", PUT), ("delete", DELETE), ("list", LIST), ("stats", STATS))}
        return self._client

    def _key(self, owner: str, kind: str, key: str) -> str:
        return f"{PREFIX}obj:{kind}/{owner}/{key}"

    async def _call(self, work: Any) -> Any:
        import redis.exceptions

        try:
            return await asyncio.wait_for(work, TIMEOUT_S * 2)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, asyncio.TimeoutError, OSError) as exc:
            tls = _tls_failure(exc)
            if tls:
                raise StateUnavailable(f"The state store {self.url} failed TLS: {tls}. Stored responses and "
                                       "conversations are unavailable until it connects.") from None
            raise StateUnavailable(f"The state store {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                                   "stored responses and conversations are unavailable until it is back.") from None
        except redis.exceptions.RedisError as exc:
            raise StateUnavailable(f"The state store {self.url} refused a command ({type(exc).__name__}: {exc}).") \
                from None

    async def start(self) -> None:
        await self._call(self._redis().ping())

    async def ping(self) -> None:
        await self._call(self._redis().ping())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def get(self, owner: str, kind: str, key: str) -> dict[str, Any] | None:
        data = await self._call(self._redis().get(self._key(owner, kind, key)))
        return await decoded(data) if data is not None else None

    async def put(self, owner: str, kind: str, key: str, value: dict[str, Any]) -> None:
        await self._put(owner, kind, key, value, "")

    async def read(self, owner: str, kind: str, key: str) -> tuple[dict[str, Any], str] | None:
        data = await self._call(self._redis().get(self._key(owner, kind, key)))
        return await versioned(data) if data is not None else None

    async def replace(self, owner: str, kind: str, key: str, value: dict[str, Any], version: str) -> bool:
        return await self._put(owner, kind, key, value, version)

    async def _put(self, owner: str, kind: str, key: str, value: dict[str, Any], version: str) -> bool:
        data = await self.encoded(value)
        self._redis()
        limit = self.limits.max_count.get(kind)
        return bool(await self._call(self._scripts["put"](args=[
            PREFIX, self._key(owner, kind, key), kind, data, max(1, int(self.limits.ttl_s * 1000)),
            -1 if limit is None else limit, self.limits.max_bytes, version])))

    async def delete(self, owner: str, kind: str, key: str) -> bool:
        self._redis()
        return bool(await self._call(self._scripts["delete"](args=[PREFIX, self._key(owner, kind, key)])))

    async def list(self, owner: str, kind: str) -> list[str]:
        self._redis()
        start = self._key(owner, kind, "")
        keys = await self._call(self._scripts["list"](args=[PREFIX, kind]))
        return [k.decode()[len(start):] for k in keys if k.decode().startswith(start)]

    async def stats(self) -> dict[str, int]:
        self._redis()
        objects, size = await self._call(self._scripts["stats"](args=[PREFIX]))
        return {"objects": int(objects), "bytes": int(size)}
