"""Speculative decoding on the real gemma-3-270m model: greedy output unchanged, a DRAFT model
(gemma as its own draft), and a DRAFT model with another vocabulary refused.

llama.cpp's CPU kernels are not batch-invariant (NOTES.md), and that holds inside one
sequence too: the logits of a token verified in a batch of 1 + k tokens may differ in the last
bits from those of the same token decoded alone, so where two tokens are nearly tied (a gap of
0.08 was seen on the edit prompt of bench/speculative.py) speculation may take the other one.
So: exact identity is tested where the model is confident; on a prompt with near ties, the
strongest invariant that holds is tested: every token speculation emitted is the model's
argmax, up to that noise, when the whole output is scored again in one batch (teacher
forcing). (Even reproducibility needs the same batches: a second run of the same prompt reuses
its KV cells from the prompt cache, evaluates only its last token, and may diverge too.)
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import trio

from power.engine import EngineError, GenerationParams, load
from power.engine.backend import BatchEntry
from power.engine.llama import ContextParams, LlamaContext, LlamaModel
from power.options import Options

pytestmark = pytest.mark.slow

REPETITIVE = (
    "Colours: red, green, blue, yellow, purple, orange, red, green, blue, yellow, purple, "
    "orange, red, green, blue, yellow, purple, orange, red, green, blue,"
)
CODE = '''Original code:
```python
def area(width, height):
    """The area of a rectangle."""
    if width < 0 or height < 0:
        raise ValueError("negative size")
    return width * height


def perimeter(width, height):
    """The perimeter of a rectangle."""
    return 2 * (width + height)
```

The same code, with `width` renamed to `w`:
```python
'''


def greedy(model, prompt: str, n: int, **extra) -> GenerationParams:
    options = dict(temperature=0.0, repeat_penalty=1.0, num_predict=n, **extra)
    return GenerationParams(prompt=tuple(model.tokenize(prompt)), options=Options(**options))


async def generate(model, params: GenerationParams) -> tuple[int, ...]:
    # these tests are about correctness: a fixed draft cost, not the one measured on a machine
    # that other work may slow down
    model.runner.token_cost = 0.5
    ids: list[int] = []
    async with contextlib.aclosing(model.generate(params)) as stream:
        async for chunk in stream:
            ids.extend(chunk.token_ids)
    return tuple(ids)


async def test_greedy_output_is_unchanged_by_prompt_lookup_where_the_model_is_sure(gemma_gguf):
    async with load(gemma_gguf, Options(num_ctx=512, num_thread=2), num_parallel=1) as model:
        plain = await generate(model, greedy(model, REPETITIVE, 40, draft_num_predict=0))
        runner = model.runner
        fast = await generate(model, greedy(model, REPETITIVE, 40))
        assert fast == plain
        assert runner.n_accepted > 20 and runner.n_accepted >= 0.8 * runner.n_drafted


async def test_every_token_speculation_emits_is_the_argmax_up_to_batch_noise(gemma_gguf):
    async with load(gemma_gguf, Options(num_ctx=512, num_thread=2), num_parallel=1) as model:
        first = await generate(model, greedy(model, CODE, 60))
        assert model.runner.n_accepted > 20
        prompt = model.tokenize(CODE)

    def score() -> np.ndarray:
        weights = LlamaModel(gemma_gguf)
        context = LlamaContext(weights, ContextParams(n_ctx_per_seq=512, n_seq_max=1))
        try:
            tokens = prompt + list(first)
            context.decode_batch([BatchEntry(0, tokens, 0, True, len(first) + 1)])
            base = len(tokens) - len(first) - 1
            gaps = []
            for i, token in enumerate(first):
                row = context.logits_row(base + i)
                gaps.append(float(row.max() - row[token]))
            return np.array(gaps)
        finally:
            context.close()
            weights.close()

    gaps = await trio.to_thread.run_sync(score)
    assert gaps.max() < 0.5, gaps  # argmax, or within batch noise of a near tie
    assert (gaps == 0).mean() > 0.9


async def test_a_model_as_its_own_draft_gives_the_same_output_and_accepts_nearly_all(gemma_gguf):
    options = Options(num_ctx=512, num_thread=2)
    async with load(gemma_gguf, options, num_parallel=1, speculative=False) as model:
        plain = await generate(model, greedy(model, REPETITIVE, 32))
        assert model.drafter is None and model.runner.n_drafted == 0
    async with load(gemma_gguf, options, num_parallel=1, draft=gemma_gguf) as model:
        assert model.drafter is not None
        drafted = await generate(model, greedy(model, REPETITIVE, 32))
        runner = model.runner
        assert drafted == plain
        assert runner.n_drafted > 10 and runner.n_accepted >= 0.9 * runner.n_drafted


async def test_a_draft_model_with_another_vocabulary_is_refused(gemma_gguf, minilm_gguf):
    with pytest.raises(EngineError, match="vocabulary differs") as info:
        async with load(gemma_gguf, Options(num_ctx=256), num_parallel=1, draft=minilm_gguf):
            pass
    assert info.value.status == 400
