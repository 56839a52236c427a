"""The persistent prompt cache with the real gemma-3-270m: a real restart of `power serve`
restores a long prompt's cells instead of evaluating them and answers the same; no cache file is
ever used by another model, other load options or another LoRA adapter.

The prompt counts from 1 to 180: a continuation the model is sure of, so that greedy output does
not hang on the last bits of a logit (llama.cpp's CPU flash attention is not invariant to how a
prompt was split into decodes; with it off, a restore was measured bit-identical to an
in-memory reuse of the same cells).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import httpx
import pytest
from lora_factory import write_lora_adapter

from conftest import GEMMA, populate_store
from power.engine import load
from power.engine.promptcache import PromptCache
from power.options import Options
from tests.serving import PowerServer

pytestmark = pytest.mark.slow

PROMPT = ", ".join(str(i) for i in range(1, 181)) + ","
OPTIONS = dict(temperature=0.0, num_predict=8, num_ctx=1024, seed=1)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def generate(url: str) -> dict:
    response = httpx.post(
        f"{url}/api/generate",
        json={"model": GEMMA, "prompt": PROMPT, "raw": True, "stream": False, "options": OPTIONS},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_a_restarted_server_restores_a_long_prompt_and_answers_the_same(tmp_path, gemma_gguf):
    store = tmp_path / "models"
    populate_store(store, gemma_gguf, None, None)
    env = {"POWER_PROMPT_CACHE_MIN_TOKENS": "64"}
    with PowerServer(store, env, name="first") as server:
        cold = generate(server.url)
        assert metric(server.url, "power_prompt_cached_tokens_total") == 0
    n_prompt = cold["prompt_eval_count"]
    assert n_prompt > 300
    cache_files = list((store / "prompt-cache").glob("*.pcache"))
    assert len(cache_files) == 1  # saved at shutdown
    with PowerServer(store, env, name="second") as server:
        warm = generate(server.url)
        assert metric(server.url, "power_prompt_cached_tokens_total") == n_prompt - 1
        assert metric(server.url, "power_prompt_cache_restored_tokens_total") == n_prompt - 1
        assert metric(server.url, "power_prompt_cache_restores_total") == 1
        assert metric(server.url, "power_prompt_cache_bytes") == cache_files[0].stat().st_size
    assert warm["response"] == cold["response"]
    assert warm["prompt_eval_count"] == n_prompt
    assert warm["prompt_eval_duration"] < cold["prompt_eval_duration"]


def test_a_disabled_cache_writes_nothing(tmp_path, gemma_gguf):
    store = tmp_path / "models"
    populate_store(store, gemma_gguf, None, None)
    env = {"POWER_PROMPT_CACHE_SIZE": "0", "POWER_PROMPT_CACHE_MIN_TOKENS": "64"}
    with PowerServer(store, env, name="off") as server:
        generate(server.url)
    assert not (store / "prompt-cache").exists()


# ---------------------------------------------------------------- in one process


async def greedy(model_path: Path, folder: Path, *, adapters=(), **options) -> tuple[str, int]:
    """(text, prompt tokens restored) of PROMPT, loading the model afresh on the cache."""
    cache = PromptCache(folder, max_bytes=1 << 30, min_tokens=64)
    await cache.open()
    opts = Options(**{**OPTIONS, "num_thread": 2, **options})
    parts = []
    async with (
        load(model_path, opts, num_parallel=1, adapters=adapters, prompt_cache=cache) as model,
        contextlib.aclosing(model.generate(PROMPT, opts)) as stream,
    ):
        async for chunk in stream:
            parts.append(chunk.text)
            last = chunk
    return "".join(parts), last.prompt_cached_count


async def test_no_hit_across_models_load_options_or_adapters(tmp_path, gemma_gguf):
    folder = tmp_path / "cache"
    text, cached = await greedy(gemma_gguf, folder)
    assert cached == 0
    again, cached = await greedy(gemma_gguf, folder)  # the same load: a hit
    assert cached > 300 and again == text
    n_files = len(list(folder.glob("*.pcache")))
    # another model file (same bytes, another identity: not a store blob of the same digest)
    copy = tmp_path / "other.gguf"
    shutil.copyfile(gemma_gguf, copy)
    assert (await greedy(copy, folder))[1] == 0
    # other load options that change the cells
    assert (await greedy(gemma_gguf, folder, num_ctx=2048))[1] == 0
    # a LoRA adapter (even one that changes nothing)
    zero = write_lora_adapter(gemma_gguf, tmp_path / "zero.gguf", rank=4)
    assert (await greedy(gemma_gguf, folder, adapters=(str(zero),)))[1] == 0
    # each of them saved its own file; the first load's file is still a hit
    assert len(list(folder.glob("*.pcache"))) == n_files + 3
    assert (await greedy(gemma_gguf, folder))[1] > 300


def test_restored_cells_are_the_evaluated_ones_and_give_the_same_logits(gemma_gguf):
    """The real backend's seam: a state read, restored into another context's sequence, holds
    the same cells (its state reads back byte for byte) at positions 0..n-1, and the next token's
    logits equal those of the context that evaluated them (flash attention off: with it on, the
    CPU kernel is not invariant to the cells' history, see the module docstring)."""
    import numpy as np

    from power.engine.backend import BatchEntry
    from power.engine.llama import ModelLoadParams, open_model
    from power.engine.loadspec import LoadSpec

    spec = LoadSpec(
        model_path=str(gemma_gguf), num_ctx=1024, num_parallel=2, num_thread=2,
        flash_attention=False,
    )  # fmt: skip
    opened = [open_model(spec, ModelLoadParams()) for _ in range(2)]
    try:
        (model, first), (_, second) = opened
        tokens = model.tokenize(PROMPT)
        n = len(tokens) - 1
        for i in range(0, n, 256):
            chunk = tokens[i : min(i + 256, n)]
            first.decode_batch([BatchEntry(1, chunk, i, False)])
        state = first.seq_state_get(1)
        first.decode_batch([BatchEntry(1, tokens[n:], n, True)])
        evaluated = np.array(first.logits_row(0))
        assert second.seq_state_set(1, state) == n  # (a state names its sequence id)
        assert second.seq_pos_max(1) == n - 1
        assert bytes(second.seq_state_get(1)) == bytes(state)
        second.decode_batch([BatchEntry(1, tokens[n:], n, True)])
        assert np.array_equal(np.array(second.logits_row(0)), evaluated)
        assert second.seq_state_set(0, b"not a state") == 0
    finally:
        for model, context in opened:
            context.close()
            model.close()
