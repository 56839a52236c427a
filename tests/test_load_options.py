"""Load options that used to abort llama.cpp or allocate what the client chose, on the real
gemma-3-270m: each must load and generate, or fail with an error, never kill the process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import llama_cpp
import pytest
import trio

from power.engine import EngineError, GenerationParams, load
from power.engine.llama import LlamaError
from power.engine.loadspec import MIN_NUM_CTX, max_threads
from power.options import OptionError, Options

pytestmark = pytest.mark.slow


async def generate_together(model, prompts: list[str], num_predict: int) -> list[object]:
    finals: list[object] = [None] * len(prompts)

    async def one(i: int) -> None:
        options = Options(temperature=0.0, repeat_penalty=1.0, num_predict=num_predict)
        p = GenerationParams(prompt=tuple(model.tokenize(prompts[i])), options=options)
        async with contextlib.aclosing(model.generate(p)) as stream:
            async for chunk in stream:
                if chunk.done:
                    finals[i] = chunk

    async with trio.open_nursery() as nursery:
        for i in range(len(prompts)):
            nursery.start_soon(one, i)
    return finals


@pytest.mark.parametrize("num_batch", [1, 3])
async def test_num_batch_below_num_parallel_loads_and_decodes_four_sequences(gemma_gguf, num_batch):
    # llama.cpp aborted on GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max) here
    options = Options(num_ctx=128, num_batch=num_batch, num_thread=2)
    async with load(gemma_gguf, options, num_parallel=4) as model:
        assert llama_cpp.llama_n_batch(model.context.handle) == 4
        finals = await generate_together(model, ["1, 2, 3,", "a b c", "x", "Hello"], 3)
    assert all(f is not None and f.eval_count == 3 for f in finals)


async def test_tiny_num_ctx_and_huge_num_thread_are_adjusted(gemma_gguf):
    options = Options(num_ctx=1, num_thread=4096, num_thread_batch=4096)
    async with load(gemma_gguf, options, num_parallel=2) as model:
        assert model.n_ctx_seq == MIN_NUM_CTX
        assert llama_cpp.llama_n_threads(model.context.handle) == max_threads()
        (final,) = await generate_together(model, ["word " * 100], 4)
        assert final.truncated and final.prompt_eval_count < MIN_NUM_CTX
        assert final.eval_count == 4


async def test_num_ctx_zero_on_a_long_prompt_still_generates(gemma_gguf):
    async with load(gemma_gguf, Options(num_ctx=0, num_thread=2), num_parallel=1) as model:
        (final,) = await generate_together(model, ["one two three " * 30], 2)
        assert final.eval_count == 2 and final.truncated


async def test_negative_load_options_are_refused_before_loading(gemma_gguf):
    for bad in (dict(num_ctx=-1), dict(num_batch=-1), dict(num_batch=0), dict(num_thread=-2)):
        with pytest.raises(OptionError):
            async with load(gemma_gguf, Options(**bad)):
                pass


async def test_gpu_memory_and_numa_options_load_on_a_cpu_build(gemma_gguf):
    options = Options(
        num_ctx=64, num_gpu=2**40, main_gpu=7, use_mlock=True, use_mmap=False, numa=True
    )
    async with load(gemma_gguf, options, num_parallel=1) as model:
        (final,) = await generate_together(model, ["1, 2, 3,"], 2)
        assert final.eval_count == 2


async def test_a_quantized_v_cache_without_flash_attention_is_an_error_not_an_abort(gemma_gguf):
    options = Options(num_ctx=64, flash_attention=False)
    with pytest.raises(LlamaError, match="flash_attn"):
        async with load(gemma_gguf, options, num_parallel=1, kv_cache_type="q8_0"):
            pass


async def test_extreme_sampling_values_on_real_logits_finish_or_are_refused(gemma_gguf):
    in_range = [
        dict(repeat_penalty=1e-45),
        dict(repeat_penalty=0.0, temperature=0.9),
        dict(frequency_penalty=-100.0, presence_penalty=100.0),
        dict(temperature=1e-45),
        dict(mirostat=2, mirostat_tau=100.0, mirostat_eta=10.0),
    ]
    refused = [dict(frequency_penalty=-1e308), dict(typical_p=float("nan")), dict(mirostat=9)]
    async with load(gemma_gguf, Options(num_ctx=128, num_thread=2), num_parallel=4) as model:

        async def run(extreme: dict) -> int:
            p = GenerationParams(
                prompt=tuple(model.tokenize("The the the the")),
                options=Options(num_predict=3, seed=1, **extreme),
            )
            async with contextlib.aclosing(model.generate(p)) as stream:
                async for chunk in stream:
                    if chunk.done:
                        return chunk.eval_count
            raise AssertionError("no final chunk")

        for extreme in in_range:
            assert await run(extreme) == 3, extreme
        for extreme in refused:
            with pytest.raises(EngineError) as info:
                await run(extreme)
            assert info.value.status == 400 and next(iter(extreme)) in str(info.value)
        assert model.runner.broken is None


def test_an_abort_prints_one_line_without_a_backtrace(gemma_gguf):
    """GGML_NO_BACKTRACE is set by power.engine.llama: if llama.cpp still aborts (here forced
    with raw llama.cpp calls that bypass power's clamps), it says why in one line."""
    script = textwrap.dedent(
        f"""
        import power.engine.llama as L
        model = L.LlamaModel({str(gemma_gguf)!r})
        L.LlamaContext(model, L.ContextParams(n_ctx_per_seq=64, n_seq_max=4, n_batch=1,
                                              n_ubatch=1, kv_unified=True, n_threads=1))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GGML_NO_BACKTRACE"}
    root = str(Path(__file__).resolve().parents[1])  # this checkout's power, not another
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "GGML_ASSERT" in lines[-1]
    assert "gdb" not in result.stderr and "backtrace" not in result.stderr.lower()
    assert len(lines) <= 3
