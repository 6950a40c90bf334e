"""Warm pipelines: loaded once, reused across requests, at most ``max_loaded`` kept (least recently used out).

The reference engine reloads about 2 GB of weights on every request (REFERENCE.md §1.6);
here a model is loaded on first use and stays loaded until evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from localai_sd.models import ModelConfig
from localai_sd.pipeline.img2img import EditSpec
from localai_sd.pipeline.pipeline import CancelCheck, GeneratedImage, StepCallback
from localai_sd.pipeline.request import GenerationRequest


class Pipeline(Protocol):
    """What the server needs of a loaded model (``StableDiffusion`` provides it)."""

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        edit: EditSpec | None = None,
    ) -> list[GeneratedImage]:
        """Generate the request's n images (edits of ``edit``'s image when given)."""
        ...

    def close(self) -> None:
        """Free the nets."""
        ...


Loader = Callable[[ModelConfig], Pipeline]


@dataclass
class _Entry:
    """A loaded pipeline, the config it came from, and how many jobs are using it."""

    config: ModelConfig
    pipeline: Pipeline
    users: int = 0
    evicted: bool = False


class ModelCache:
    """An LRU of loaded pipelines; a pipeline in use is closed only after its last user is done."""

    def __init__(self, loader: Loader, max_loaded: int):
        """A cache that loads with ``loader`` and keeps at most ``max_loaded`` pipelines."""
        self._loader = loader
        self._max_loaded = max(1, max_loaded)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    @contextmanager
    def lease(self, config: ModelConfig) -> Iterator[Pipeline]:
        """Use the pipeline of ``config``, loading it (and evicting the least recently used) if needed."""
        entry = self._acquire(config)
        try:
            yield entry.pipeline
        finally:
            self._release(entry)

    def loaded(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        with self._lock:
            return list(self._entries)

    def evict(self, name: str) -> None:
        """Drop model ``name`` (after a reinstall or delete); it is closed once no job uses it."""
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is not None:
                entry.evicted = True
        if entry is not None:
            self._close_if_idle(entry)

    def close(self) -> None:
        """Evict every model."""
        for name in self.loaded():
            self.evict(name)

    def _acquire(self, config: ModelConfig) -> _Entry:
        """Find or load the entry for ``config`` and count one more user."""
        with self._load_lock:
            with self._lock:
                entry = self._entries.get(config.name)
                if entry is not None and entry.config == config:
                    self._entries.move_to_end(config.name)
                    entry.users += 1
                    return entry
            if entry is not None:
                self.evict(config.name)
            self._make_room(self._max_loaded - 1)
            pipeline = self._loader(config)
            entry = _Entry(config, pipeline, users=1)
            with self._lock:
                self._entries[config.name] = entry
            return entry

    def _make_room(self, keep: int) -> None:
        """Evict least recently used models until at most ``keep`` remain."""
        while True:
            with self._lock:
                if len(self._entries) <= keep:
                    return
                name = next(iter(self._entries))
            self.evict(name)

    def _release(self, entry: _Entry) -> None:
        """Count one user less; close the pipeline if it was evicted meanwhile."""
        with self._lock:
            entry.users -= 1
        self._close_if_idle(entry)

    def _close_if_idle(self, entry: _Entry) -> None:
        """Close an evicted entry's pipeline once nobody uses it (exactly once)."""
        with self._lock:
            if not entry.evicted or entry.users > 0:
                return
            entry.users = -1
        entry.pipeline.close()
