"""What a generation cluster keeps in Redis besides RQ's own keys: each job's numbered events, its cancel
flag, and which workers are alive for which model queue.

Keys (all under ``sd:``; every per-job key expires with the job's result):

==============================  ====================================================================
``sd:{model}``                  the RQ queue of a model (RQ prefixes it: ``rq:queue:sd:{model}``)
``sd:job:{id}:events``          list of ``{"kind", "event"}`` JSON; record ``seq`` is list index + 1
``sd:job:{id}:final``           set once the final event is in: later events are ignored
``sd:job:{id}:preview``         seq of the newest preview a newer one may replace (thinning)
``sd:job:{id}:cancel``          cooperative cancel flag, read by the worker between steps
``sd:workers:{queue}``          sorted set: worker name -> time its heartbeat runs out
==============================  ====================================================================

Appends run as one Lua script, so the API and a worker (or a retried run) never write two final events,
and a replaced preview becomes a ``_dropped`` tombstone in place: sequence numbers never move.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import redis

from localai_sd.errors import BackendUnavailable
from localai_sd.jobs import events as ev
from localai_sd.jobs.events import Record

PREFIX = "sd:"
DROPPED = "_dropped"
#: Seconds to open a connection to Redis, and to wait for an answer (API side).
CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 5.0

APPEND_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = redis.call('RPUSH', KEYS[1], ARGV[1])
if ARGV[3] ~= '0' then
  local prev = redis.call('GET', KEYS[3])
  if prev then redis.call('LSET', KEYS[1], tonumber(prev) - 1, ARGV[5]) end
  if ARGV[3] == '1' then redis.call('SET', KEYS[3], n, 'EX', ARGV[4]) else redis.call('DEL', KEYS[3]) end
end
if ARGV[2] == '1' then redis.call('SET', KEYS[2], n, 'EX', ARGV[4]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return n
"""


def queue_name(model: str) -> str:
    """The RQ queue of a model's jobs: only workers holding the model listen on it."""
    return f"{PREFIX}{model}"


def job_key(job_id: str, part: str) -> str:
    """A per-job key: ``sd:job:{id}:{part}``."""
    return f"{PREFIX}job:{job_id}:{part}"


def workers_key(queue: str) -> str:
    """The sorted set of live workers listening on ``queue``."""
    return f"{PREFIX}workers:{queue}"


def safe_url(url: str) -> str:
    """The Redis URL without its password, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT_SECONDS) -> redis.Redis:
    """A Redis client for ``url`` with short connect and read timeouts (it reconnects by itself)."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=socket_timeout
    )


@contextlib.contextmanager
def reachable(url: str) -> Iterator[None]:
    """Turn Redis connection failures into ``BackendUnavailable`` naming the (password-free) URL."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailable(
            f"the job queue (Redis at {safe_url(url)}) is unreachable: {exc}; try again shortly"
        ) from None


def preview_mode(event: ev.Event, global_step: int, keep_steps: Iterable[int]) -> str:
    """'0' for a non-preview, '2' for a preview kept for good, '1' for one a newer preview replaces."""
    if not isinstance(event, ev.Preview):
        return "0"
    return "2" if global_step in keep_steps else "1"


class JobStore:
    """Events, cancel flags and worker liveness of cluster jobs in one Redis."""

    def __init__(self, client: redis.Redis, ttl_seconds: int):
        """Per-job keys expire ``ttl_seconds`` after their last write."""
        self.redis = client
        self.ttl = ttl_seconds
        self._append = client.register_script(APPEND_SCRIPT)

    def append(
        self, job_id: str, event: ev.Event, global_step: int = 0, keep_steps: Iterable[int] = ()
    ) -> int:
        """Add ``event`` to the job's stream; its seq, or 0 when the stream already ended."""
        keys = [job_key(job_id, "events"), job_key(job_id, "final"), job_key(job_id, "preview")]
        args = [
            json.dumps({"kind": event.kind, "event": ev.to_dict(event)}, separators=(",", ":")),
            "1" if ev.is_final(event) else "0",
            preview_mode(event, global_step, keep_steps),
            self.ttl,
            json.dumps({"kind": DROPPED}),
        ]
        return int(self._append(keys=keys, args=args))

    def since(self, job_id: str, after: int = 0) -> list[Record]:
        """The job's records numbered above ``after`` (tombstones of replaced previews skipped)."""
        raw = self.redis.lrange(job_key(job_id, "events"), max(0, after), -1)
        records = []
        for seq, item in enumerate(raw, start=after + 1):
            data = json.loads(item)
            if data["kind"] != DROPPED:
                records.append(Record(seq, ev.from_dict(data["event"], data["kind"])))
        return records

    def has_events(self, job_id: str) -> bool:
        """True once anything was published for the job."""
        return bool(self.redis.exists(job_key(job_id, "events")))

    def finished(self, job_id: str) -> bool:
        """True once the job's final event is in."""
        return bool(self.redis.exists(job_key(job_id, "final")))

    def request_cancel(self, job_id: str) -> None:
        """Raise the job's cancel flag (the worker stops at its next step)."""
        self.redis.set(job_key(job_id, "cancel"), 1, ex=self.ttl)

    def cancel_requested(self, job_id: str) -> bool:
        """True once someone asked to cancel the job."""
        return bool(self.redis.exists(job_key(job_id, "cancel")))

    def heartbeat(self, queues: Iterable[str], worker: str, ttl_seconds: float) -> None:
        """Record that ``worker`` listens on ``queues`` for the next ``ttl_seconds``."""
        until = time.time() + ttl_seconds
        with self.redis.pipeline() as pipe:
            for queue in queues:
                pipe.zadd(workers_key(queue), {worker: until})
                pipe.zremrangebyscore(workers_key(queue), "-inf", time.time())
            pipe.execute()

    def leave(self, queues: Iterable[str], worker: str) -> None:
        """Remove ``worker`` from its queues' live sets (a clean stop)."""
        with self.redis.pipeline() as pipe:
            for queue in queues:
                pipe.zrem(workers_key(queue), worker)
            pipe.execute()

    def live_workers(self, queue: str) -> int:
        """How many workers listening on ``queue`` have a heartbeat that has not run out."""
        return int(self.redis.zcount(workers_key(queue), time.time(), "+inf"))
