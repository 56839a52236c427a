"""Resolved models remembered per manifest file, so that a request does not re-read the store.

`models.resolve` reads a manifest, its config and text blobs, and a GGUF header: milliseconds
to tens of milliseconds of file I/O per request. Blobs are content-addressed and never change;
a model changes only when its manifest file is replaced (every writer renames a new file into
place) or removed. So a resolved model stays valid for as long as its manifest file is the same
file: the cache key is the manifest's path and its (inode, size, mtime_ns, ctime_ns). A lookup
costs the manifest lookup and one `stat`; a replaced, rewritten or deleted manifest is read
again (or answers ModelNotFoundError) on the next lookup, with no call from the store needed.

Thread-safe; `lookup` blocks on file I/O: call it in a worker thread. The returned
`ResolvedModel` is shared between requests: treat it as read-only.
"""

from __future__ import annotations

import collections
import os
import threading

from power.registry.models import ResolvedModel, parse_name, resolve
from power.registry.names import ModelName
from power.registry.store import ModelNotFoundError, Store

_Key = tuple[int, int, int, int]


def _file_key(stat: os.stat_result) -> _Key:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class ResolveCache:
    """`models.resolve` with the results remembered per manifest file (the `max_entries` most
    recently used)."""

    def __init__(self, store: Store, max_entries: int = 64) -> None:
        self.store = store
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[_Key, ResolvedModel]] = (
            collections.OrderedDict()
        )
        self.n_reads = 0  # how many lookups read the store (for tests and metrics)

    def lookup(self, name: str | ModelName) -> ResolvedModel:
        """The model `name`, as `models.resolve` reads it. Raises ModelNotFoundError,
        InvalidNameError, StoreError."""
        model_name = parse_name(name)
        path = self.store.find_manifest_path(model_name)
        if path is None:
            raise ModelNotFoundError(model_name.display)
        try:
            key = _file_key(path.stat())
        except FileNotFoundError:
            raise ModelNotFoundError(model_name.display) from None
        slot = str(path)
        with self._lock:
            hit = self._entries.get(slot)
            if hit is not None and hit[0] == key:
                self._entries.move_to_end(slot)
                return hit[1]
        # A manifest replaced between the stat and the read is cached under the older key:
        # the next lookup sees a different key and reads it again.
        resolved = resolve(self.store, model_name)
        with self._lock:
            self.n_reads += 1
            self._entries[slot] = (key, resolved)
            self._entries.move_to_end(slot)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return resolved

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
