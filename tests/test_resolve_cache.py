"""Resolved models are remembered per manifest file (`power.registry.resolve_cache`) and read
again as soon as the manifest changes: re-created, copied over, deleted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import GEMMA
from power.registry import models
from power.registry.create import CreateRequest
from power.registry.resolve_cache import ResolveCache
from power.registry.store import ModelNotFoundError, Store


@pytest.fixture
def store(model_store: Path, tmp_path: Path) -> Store:
    """A private copy of the test store (hard links: blobs are never written in place)."""
    root = tmp_path / "models"
    shutil.copytree(model_store, root, copy_function=os.link)
    return Store(root)


def test_a_model_is_read_once_while_its_manifest_is_unchanged(store: Store):
    cache = ResolveCache(store)
    first = cache.lookup(GEMMA)
    assert cache.lookup(GEMMA) is first
    assert cache.lookup("Gemma3:270M") is first  # another spelling of the same manifest
    assert cache.n_reads == 1
    assert first.params["num_ctx"] == 1024


def test_a_changed_manifest_is_read_again(store: Store):
    cache = ResolveCache(store)
    before = cache.lookup(GEMMA)
    assert before.system is None
    # re-created in place with a SYSTEM layer: a new manifest file under the same name
    models.create(store, CreateRequest(model=GEMMA, from_=GEMMA, system="Answer in French."))
    after = cache.lookup(GEMMA)
    assert after is not before
    assert after.system == "Answer in French."
    assert after.digest != before.digest
    assert cache.lookup(GEMMA) is after
    assert cache.n_reads == 2


def test_a_copied_over_or_deleted_model_is_seen(store: Store):
    cache = ResolveCache(store)
    models.create(store, CreateRequest(model="other:latest", from_=GEMMA, system="Be brief."))
    gemma = cache.lookup(GEMMA)
    other = cache.lookup("other")
    assert other.system == "Be brief."
    models.copy(store, GEMMA, "other")  # replaces other's manifest with gemma's
    assert cache.lookup("other").system is None
    assert cache.lookup("other").digest == gemma.digest
    models.delete(store, "other")
    with pytest.raises(ModelNotFoundError):
        cache.lookup("other")
    assert cache.lookup(GEMMA) is gemma  # untouched by the others


def test_the_cache_keeps_the_most_recently_used(store: Store):
    for i in range(4):
        models.copy(store, GEMMA, f"copy{i}")
    cache = ResolveCache(store, max_entries=2)
    for i in range(4):
        cache.lookup(f"copy{i}")
    assert cache.n_reads == 4
    cache.lookup("copy3")
    assert cache.n_reads == 4
    cache.lookup("copy0")  # evicted
    assert cache.n_reads == 5
