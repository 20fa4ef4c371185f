"""The ``redis`` store: a real Redis (or Valkey) shared by every replica, through ``redis.asyncio``.

Keys all start with ``prefix`` (default ``{tornado-proxy}:``); its ``{...}`` is a
hash tag, so on a Redis Cluster every key lands in one slot and the Lua scripts
below (atomic merges, capped writes) may touch them together.

    <p>acct               hash   account key -> record (JSON)
    <p>pin:<sha>          string a sticky pin, expiring with it
    <p>ctr                hash   "<account key> <field>" -> counter (summed by every process)
    <p>resp:<id>          string a stored Response, expiring after the store's TTL
    <p>resp:idx / :size   zset / hash of the stored ids (write time, size) and <p>resp:bytes
    <p>lock:<key>         the OAuth refresh lock (value: its fencing token, drawn when granted; a TTL)
    <p>fence:<key>        the fencing counter;  <p>tok:<key>: the tokens last saved, with their fence
    <p>changes            the pub/sub channel every write is announced on
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Any, AsyncIterator, Callable

from tornado_proxy import jsonutil
from tornado_proxy.state.store import Backend, LockTimeout

log = logging.getLogger("tornado_proxy.state")

# Mirrors store.merge(): the store keeps the current record when the new one may not
# replace it, and says which it kept.
MERGE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local new = cjson.decode(ARGV[2])
local now = tonumber(ARGV[3])
if cur and new.t ~= 'enable' and new.t ~= 'admin' then
  local c = cjson.decode(cur)
  local healed = new.t == 'recovered' and ((c.s == 'cooling' and c.ck == 'health') or
                                           (c.s == 'disabled' and c.db == 'auth'))
  if not healed then
    if c.s == 'disabled' and new.s ~= 'disabled' then return cur end
    if c.s == 'cooling' and tonumber(c.cu or 0) > now and new.s ~= 'disabled' then
      if new.s ~= 'cooling' or tonumber(new.cu or 0) <= tonumber(c.cu or 0) then return cur end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], '{"a":' .. cjson.encode(ARGV[1]) .. ',"r":' .. ARGV[2] .. '}')
return false
"""

# KEYS: idx, sizes, bytes; ARGV: prefix, id, blob, ttl_ms, now_ms, max_entries, max_bytes
RESP_PUT = """
local p, id = ARGV[1], ARGV[2]
local size = string.len(ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[2], id) or '0')
redis.call('SET', p .. 'resp:' .. id, ARGV[3], 'PX', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[5], id)
redis.call('HSET', KEYS[2], id, size)
redis.call('INCRBY', KEYS[3], size - old)
local function drop(x)
  redis.call('DEL', p .. 'resp:' .. x)
  redis.call('ZREM', KEYS[1], x)
  redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[2], x) or '0'))
  redis.call('HDEL', KEYS[2], x)
end
for _, x in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[5]) - tonumber(ARGV[4]),
                              'LIMIT', 0, 100)) do drop(x) end
local maxn, maxb = tonumber(ARGV[6]), tonumber(ARGV[7])
while redis.call('ZCARD', KEYS[1]) > maxn or tonumber(redis.call('GET', KEYS[3]) or '0') > maxb do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not oldest then break end
  drop(oldest)
end
return 1
"""

RESP_DELETE = """
local n = redis.call('DEL', ARGV[1] .. 'resp:' .. ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0'))
redis.call('HDEL', KEYS[2], ARGV[2])
return n
"""

# The fence is drawn when the lock is granted, not when it is asked for: a waiter that
# asked first but got the lock after a newer holder must not carry the lower fence, or
# its save would lose to tokens that its own refresh has just spent.
LOCK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local f = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], f, 'PX', ARGV[1])
return f
"""

UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A stalled holder (its lock expired, a newer holder took over and saved) may not
# overwrite the newer tokens: saves carry the fence, and an older fence loses.
SAVE_TOKENS = """
local f = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if f > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'data', ARGV[2])
redis.call('PUBLISH', KEYS[2], '{"k":' .. cjson.encode(ARGV[3]) .. '}')
return 1
"""


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url: str, prefix: str = "{tornado-proxy}:", timeout: float = 1.0) -> None:
        self.url = url
        self.p = prefix
        self.timeout = timeout
        self.r: Any = None
        self._pubsub: Any = None
        self._listener: asyncio.Task[None] | None = None
        self.broken: BaseException | None = None
        self.on_tokens: Callable[[str], None] | None = None
        self._scripts: dict[str, Any] = {}

    async def open(self) -> None:
        import redis.asyncio

        await self.close()
        self.broken = None
        self.r = redis.asyncio.from_url(self.url, socket_timeout=self.timeout,
                                        socket_connect_timeout=self.timeout, decode_responses=False)
        await self.r.ping()
        for name, src in (("merge", MERGE), ("resp_put", RESP_PUT), ("resp_delete", RESP_DELETE),
                          ("lock", LOCK), ("unlock", UNLOCK), ("save_tokens", SAVE_TOKENS)):
            self._scripts[name] = self.r.register_script(src)

    def _pin_key(self, provider: str, session: str) -> str:
        h = hashlib.sha256(f"{provider}\0{session}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{self.p}pin:{h}"

    async def load(self) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str, float]]]:
        raw = await self.r.hgetall(self.p + "acct")
        accounts = {k.decode(): jsonutil.loads(v) for k, v in raw.items()}
        pins: list[tuple[str, str, str, float]] = []
        keys = [k async for k in self.r.scan_iter(match=self.p + "pin:*", count=1000)]
        for i in range(0, len(keys), 500):
            for v in await self.r.mget(keys[i:i + 500]):
                if v:
                    d = jsonutil.loads(v)
                    pins.append((d["p"], d["s"], d["a"], float(d["u"])))
        return accounts, pins

    async def listen(self, on_account: Callable[[str, dict[str, Any]], None],
                     on_pin: Callable[[str, str, str, float], None]) -> None:
        ps = self._pubsub = self.r.pubsub()
        await ps.subscribe(self.p + "changes")
        await ps.get_message(timeout=self.timeout)  # the subscription's confirmation

        async def run() -> None:
            try:
                while True:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        d = jsonutil.loads(msg["data"])
                        if "r" in d:  # (a pin has an "a" too: its account)
                            on_account(d["a"], d["r"])
                        elif "p" in d:
                            on_pin(d["p"], d["s"], d["a"], float(d["u"]))
                        elif "k" in d and self.on_tokens is not None:
                            self.on_tokens(d["k"])
                    except (ValueError, KeyError, TypeError):
                        continue  # not one of ours
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                self.broken = e  # the next sync tick sees it, reconnects and reloads

        self._listener = asyncio.ensure_future(run())

    async def changes(self) -> None:
        if self.broken is not None:
            raise ConnectionError(f"pub/sub connection lost: {self.broken}")
        return None

    async def write(self, accounts: dict[str, dict[str, Any]], pins: list[tuple[str, str, str, float]],
                    counters: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
        kept: dict[str, dict[str, Any]] = {}
        wall = time.time()
        merge = self._scripts["merge"]
        for key, rec in accounts.items():
            cur = await merge(keys=[self.p + "acct", self.p + "changes"], args=[key, jsonutil.dumps(rec), wall])
            if cur:
                kept[key] = jsonutil.loads(cur)
        if pins or counters:
            pipe = self.r.pipeline(transaction=False)
            for prov, sess, acct, until in pins:
                ms = int((until - wall) * 1000)
                if ms <= 0:
                    continue
                d = jsonutil.dumps({"p": prov, "s": sess, "a": acct, "u": until})
                pipe.set(self._pin_key(prov, sess), d, px=ms)
                pipe.publish(self.p + "changes", d)
            for key, fields in counters.items():
                for f, v in fields.items():
                    pipe.hincrbyfloat(self.p + "ctr", f"{key} {f}", v)
            await pipe.execute()
        return kept

    async def counters(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for k, v in (await self.r.hgetall(self.p + "ctr")).items():
            key, _, f = k.decode().rpartition(" ")
            out.setdefault(key, {})[f] = float(v)
        return out

    def _resp_keys(self) -> list[str]:
        return [self.p + "resp:idx", self.p + "resp:size", self.p + "resp:bytes"]

    async def resp_put(self, rid: str, blob: bytes, ttl: float, max_entries: int, max_bytes: int) -> None:
        await self._scripts["resp_put"](keys=self._resp_keys(),
                                        args=[self.p, rid, blob, int(ttl * 1000), int(time.time() * 1000),
                                              max_entries, max_bytes])

    async def resp_get(self, rid: str) -> bytes | None:
        v = await self.r.get(self.p + "resp:" + rid)
        return bytes(v) if v is not None else None

    async def resp_delete(self, rid: str) -> bool:
        return bool(await self._scripts["resp_delete"](keys=self._resp_keys(), args=[self.p, rid]))

    @contextlib.asynccontextmanager
    async def refresh_lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[int | None]:
        lock = self.p + "lock:" + key
        deadline = time.monotonic() + wait
        while True:
            fence = int(await self._scripts["lock"](keys=[lock, self.p + "fence:" + key], args=[int(ttl * 1000)]))
            if fence:
                break
            if time.monotonic() > deadline:
                raise LockTimeout(f"timed out waiting for the refresh lock of '{key}'")
            await asyncio.sleep(0.05)
        try:
            yield fence
        finally:
            with contextlib.suppress(Exception):
                await self._scripts["unlock"](keys=[lock], args=[fence])

    async def load_tokens(self, key: str) -> dict[str, Any] | None:
        v = await self.r.hget(self.p + "tok:" + key, "data")
        return jsonutil.loads(v) if v else None

    async def save_tokens(self, key: str, fence: int | None, tokens: dict[str, Any]) -> bool:
        return bool(await self._scripts["save_tokens"](keys=[self.p + "tok:" + key, self.p + "changes"],
                                                       args=[fence or 0, jsonutil.dumps(tokens), key]))

    async def close(self) -> None:
        t, self._listener = self._listener, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(BaseException):
                await t
        ps, self._pubsub = self._pubsub, None
        if ps is not None:
            with contextlib.suppress(Exception):
                await ps.aclose()
        r, self.r = self.r, None
        if r is not None:
            with contextlib.suppress(Exception):
                await r.aclose()
