"""One job's event stream, kept in memory: numbered records read by cursor, previews thinned.

Readers pull: ``since(cursor)`` returns the records after ``cursor`` without blocking, so the same
reader works for a job running in this process or on a worker elsewhere (any store that keeps
numbered records). Previews are large and frequent, so only the newest is kept, plus the ones at
``keep_steps`` (the partial images an OpenAI stream asked for).
"""

from __future__ import annotations

import threading

from localai_sd.jobs.events import Event, Preview, Record, is_final


class EventLog:
    """Numbered events of one job; the last is ``done``, ``error`` or ``cancelled``."""

    def __init__(self, keep_steps: frozenset[int] = frozenset()):
        """An empty log; previews at the global steps in ``keep_steps`` are never dropped."""
        self.keep_steps = keep_steps
        self._records: list[Record] = []
        #: Sequence numbers of previews that a newer preview may replace.
        self._droppable: set[int] = set()
        self._next = 1
        self._lock = threading.Lock()

    def append(self, event: Event, global_step: int = 0) -> Record | None:
        """Add ``event`` (ignored after the final one); a preview replaces the previous droppable one."""
        with self._lock:
            if self._records and is_final(self._records[-1].event):
                return None
            record = Record(self._next, event)
            self._next += 1
            if isinstance(event, Preview):
                self._records = [r for r in self._records if r.seq not in self._droppable]
                self._droppable = set() if global_step in self.keep_steps else {record.seq}
            self._records.append(record)
            return record

    def since(self, cursor: int = 0) -> list[Record]:
        """Records numbered above ``cursor``, oldest first."""
        with self._lock:
            return [r for r in self._records if r.seq > cursor]

    def finished(self) -> bool:
        """True once the final event is in."""
        with self._lock:
            return bool(self._records) and is_final(self._records[-1].event)

    def last(self) -> Event | None:
        """The newest event, or None."""
        with self._lock:
            return self._records[-1].event if self._records else None
