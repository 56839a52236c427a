"""LoRA adapters (`ADAPTER` in a Modelfile) end to end, with real adapter files written for the
real gemma-3-270m by `tests/lora_factory.py`: the engine applies them (a zero adapter changes
nothing, a strong one changes the output), refuses invalid files cleanly, and a model created with
an adapter in the store is served with it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from lora_factory import write_lora_adapter, write_lora_tensors

import power.engine.llama as engine_llama
from power.engine import GenerationParams, load
from power.engine.llama import LlamaContext, LlamaError, LlamaModel
from power.options import Options
from power.registry import models
from power.registry.create import CreateRequest
from power.registry.store import Store

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "num_predict": 8}
LOAD_OPTIONS = Options(num_ctx=256, num_thread=2)


@pytest.fixture(scope="module")
def adapters(gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapter files for gemma-3-270m: `zero` (B = 0, F16), `strong` (large random B, F32)."""
    folder = tmp_path_factory.mktemp("lora")
    return {
        "zero": write_lora_adapter(
            gemma_gguf, folder / "zero.gguf", rank=8, b_std=0.0, seed=1, dtype=np.float16
        ),
        "strong": write_lora_adapter(gemma_gguf, folder / "strong.gguf", rank=4, b_std=1.0, seed=2),
    }


_runs: dict[tuple[str, ...], tuple[str, list[int], list[float]]] = {}


async def greedy_run(gemma_gguf: Path, adapter_paths: tuple[Path, ...]):
    """(text, token ids, logprobs) of a greedy continuation of PROMPT; memoized per adapter set."""
    key = tuple(str(path) for path in adapter_paths)
    if key not in _runs:
        async with load(gemma_gguf, LOAD_OPTIONS, num_parallel=1, adapters=key) as model:
            params = GenerationParams(
                prompt=tuple(model.tokenize(PROMPT)),
                options=Options().updated(GREEDY),
                logprobs=True,
            )
            text, ids, logprobs = [], [], []
            async with contextlib.aclosing(model.generate(params)) as stream:
                async for chunk in stream:
                    text.append(chunk.text)
                    ids.extend(chunk.token_ids)
                    logprobs.extend(entry.logprob for entry in chunk.logprobs)
            assert chunk.done and chunk.eval_count == GREEDY["num_predict"]
        _runs[key] = ("".join(text), ids, logprobs)
    return _runs[key]


# ---------------------------------------------------------------- engine


async def test_zero_adapter_gives_exactly_the_base_output(gemma_gguf, adapters):
    base = await greedy_run(gemma_gguf, ())
    with_zero = await greedy_run(gemma_gguf, (adapters["zero"],))
    assert base[0].strip()
    assert with_zero == base  # same text, same tokens, bit-identical logprobs


async def test_strong_adapter_changes_the_output(gemma_gguf, adapters):
    base_text, base_ids, base_logprobs = await greedy_run(gemma_gguf, ())
    text, ids, logprobs = await greedy_run(gemma_gguf, (adapters["strong"],))
    assert ids != base_ids and text != base_text
    assert logprobs[0] != base_logprobs[0]  # already the first token's distribution moved


async def test_two_adapters_apply_together(gemma_gguf, adapters):
    """A zero adapter next to the strong one adds exactly nothing to it."""
    strong = await greedy_run(gemma_gguf, (adapters["strong"],))
    both = await greedy_run(gemma_gguf, (adapters["zero"], adapters["strong"]))
    assert both == strong


def _bad_adapter(kind: str, gemma_gguf: Path, folder: Path) -> Path:
    path = folder / f"{kind}.gguf"
    if kind == "not-gguf":
        path.write_bytes(b"ADAPTER? no, just some bytes\n" * 64)
    elif kind == "base-model":
        return gemma_gguf  # a GGUF, but general.type is not "adapter"
    elif kind == "other-architecture":
        write_lora_adapter(gemma_gguf, path, layers=(0,), architecture="llama")
    elif kind == "wrong-shape":
        write_lora_adapter(gemma_gguf, path, layers=(0,), transpose_a=True)
    elif kind == "unknown-tensor":  # a layer gemma-3-270m does not have
        write_lora_tensors(
            path,
            "gemma3",
            {
                "blk.99.attn_q.weight.lora_a": np.zeros((4, 640), dtype=np.float32),
                "blk.99.attn_q.weight.lora_b": np.zeros((1024, 4), dtype=np.float32),
            },
            alpha=4.0,
        )
    return path


@pytest.mark.parametrize(
    "kind", ["not-gguf", "base-model", "other-architecture", "wrong-shape", "unknown-tensor"]
)
async def test_invalid_adapter_is_a_clear_error_and_frees_everything(
    kind, gemma_gguf, tmp_path, monkeypatch
):
    opened: list[LlamaModel | LlamaContext] = []

    class RecordedModel(LlamaModel):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    class RecordedContext(LlamaContext):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    # the production backend (LlamaBackend.open) builds both
    monkeypatch.setattr(engine_llama, "LlamaModel", RecordedModel)
    monkeypatch.setattr(engine_llama, "LlamaContext", RecordedContext)
    bad = _bad_adapter(kind, gemma_gguf, tmp_path)
    with pytest.raises(LlamaError, match="could not load adapter") as caught:
        async with load(gemma_gguf, LOAD_OPTIONS, num_parallel=1, adapters=(str(bad),)):
            pytest.fail("a model with an invalid adapter was loaded")
    assert str(bad) in str(caught.value)
    assert [type(thing) for thing in opened] == [RecordedModel, RecordedContext]
    model, context = opened
    assert model._model is None and model._lora == []  # weights and adapters freed
    assert context._ctx is None


# ---------------------------------------------------------------- store and server


def _generate(client: httpx.Client, model: str) -> httpx.Response:
    return client.post(
        "/api/generate",
        json={"model": model, "prompt": PROMPT, "raw": True, "stream": False, "options": GREEDY},
    )


def test_model_created_with_an_adapter_is_served_with_it(gemma_gguf, adapters, tmp_path):
    from conftest import run_power_server

    root = tmp_path / "models"
    store = Store(root)
    models.import_gguf(store, "gemma-base", gemma_gguf)
    digest = store.add_blob_file(adapters["strong"])
    models.create(
        store,
        CreateRequest(model="gemma-lora", from_="gemma-base", adapters={"adapter.gguf": digest}),
    )
    other = write_lora_adapter(
        gemma_gguf, tmp_path / "llama.gguf", layers=(0,), architecture="llama"
    )
    models.create(
        store,
        CreateRequest(
            model="gemma-bad-lora",
            from_="gemma-base",
            adapters={"adapter.gguf": store.add_blob_file(other)},
        ),
    )

    resolved = models.resolve(store, "gemma-lora")
    assert resolved.adapter_paths == [store.blob_path(digest)]
    assert resolved.model_path == models.resolve(store, "gemma-base").model_path
    modelfile = models.show(store, "gemma-lora").modelfile
    assert f"ADAPTER {store.blob_path(digest)}" in modelfile.splitlines()
    assert "ADAPTER" not in models.show(store, "gemma-base").modelfile

    with run_power_server(root) as url, httpx.Client(base_url=url, timeout=120) as client:
        base = _generate(client, "gemma-base")
        lora = _generate(client, "gemma-lora")
        assert base.status_code == 200 and lora.status_code == 200, (base.text, lora.text)
        assert base.json()["eval_count"] == lora.json()["eval_count"] == 8
        assert lora.json()["response"] != base.json()["response"]

        bad = _generate(client, "gemma-bad-lora")
        assert bad.status_code >= 400 and "adapter" in bad.json()["error"], bad.text
        again = _generate(client, "gemma-base")  # the failed load left the server working
        assert again.status_code == 200 and again.json()["response"] == base.json()["response"]
