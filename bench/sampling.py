"""Per-token sampling cost on gemma-3-270m's 262,144-token rows, against llama.cpp's samplers.

    .venv/bin/python bench/sampling.py [--rows N] [--reps R]

Real logits: gemma decodes a plain-English continuation (rows for the unconstrained figures)
and a JSON continuation under `JSON_GBNF` (rows plus the tokens taken, for the grammar figure).
Each figure then times `SequenceSampler.sample` + `accept` over those rows (R passes), and the
same job done by llama.cpp's own sampler chain on the same rows (the reference; its time
includes filling the 262,144-entry `llama_token_data_array`, as a server must each step).
One line per figure: median and 90th percentile in ms, and the reference's median.
"""

from __future__ import annotations

import ctypes
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import llama_cpp as L
import numpy as np
from docopt import docopt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import models  # noqa: E402  (scripts/models.py)

from power.engine.grammar import JSON_GBNF, GrammarConstraint  # noqa: E402
from power.engine.sampling import SequenceSampler, VocabInfo  # noqa: E402
from power.options import Options  # noqa: E402

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@L.llama_log_callback
def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


class Gemma:
    """Just enough of the low-level API to decode one sequence and read its logits."""

    def __init__(self, path: Path) -> None:
        L.llama_log_set(_quiet, ctypes.c_void_p(0))
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(
            str(path).encode(), L.llama_model_default_params()
        )
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        params = L.llama_context_default_params()
        params.n_ctx, params.n_threads, params.n_threads_batch = 1024, 2, 2
        self.ctx = L.llama_init_from_model(self.model, params)
        self.info = VocabInfo(
            n_vocab=self.n_vocab,
            newline_ids=[L.llama_vocab_nl(self.vocab)],
            eog_ids=[t for t in range(1024) if L.llama_vocab_is_eog(self.vocab, t)],
        )

    def start(self, prompt: str) -> np.ndarray:
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        tokens = (L.llama_token * 512)()
        n = L.llama_tokenize(
            self.vocab, prompt.encode(), len(prompt.encode()), tokens, 512, True, False
        )
        assert L.llama_decode(self.ctx, L.llama_batch_get_one(tokens, n)) == 0
        return self.row()

    def step(self, token: int) -> np.ndarray:
        one = (L.llama_token * 1)(token)
        assert L.llama_decode(self.ctx, L.llama_batch_get_one(one, 1)) == 0
        return self.row()

    def row(self) -> np.ndarray:
        return np.ctypeslib.as_array(
            L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)
        ).copy()

    def close(self) -> None:
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def collect(gemma: Gemma, prompt: str, n_rows: int, grammar: str | None) -> tuple[list, list]:
    """Rows of logits and the tokens taken, generating with default options (seed 0)."""
    sampler = SequenceSampler(
        Options().updated({"seed": 0}),
        gemma.info,
        GrammarConstraint(gemma.vocab, grammar) if grammar else None,
    )
    rows, tokens = [], []
    row = gemma.start(prompt)
    for _ in range(n_rows):
        token = sampler.sample(row)
        sampler.accept(token)
        rows.append(row)
        tokens.append(token)
        if L.llama_vocab_is_eog(gemma.vocab, token):
            break
        row = gemma.step(token)
    sampler.close()
    return rows, tokens


def llama_chain(gemma: Gemma, parts: list[Callable[[], object]]) -> object:
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    for make in parts:
        L.llama_sampler_chain_add(chain, make())
    return chain


def time_llama(gemma: Gemma, make_chain, rows, tokens, reps: int) -> list[float]:
    """llama.cpp's chain on the same rows: fill the array, apply, accept the recorded token."""
    data = np.zeros(gemma.n_vocab, dtype=_TOKEN_DATA)
    data["id"] = np.arange(gemma.n_vocab)
    times = []
    for _ in range(reps):
        chain = make_chain()
        for row, token in zip(rows, tokens, strict=True):
            start = time.perf_counter_ns()
            data["logit"] = row
            array = L.llama_token_data_array(
                data=data.ctypes.data_as(ctypes.POINTER(L.llama_token_data)),
                size=gemma.n_vocab,
                selected=-1,
                sorted=False,
            )
            L.llama_sampler_apply(chain, ctypes.byref(array))
            L.llama_sampler_accept(chain, token)
            times.append((time.perf_counter_ns() - start) / 1e6)
        L.llama_sampler_free(chain)
    return times


def time_power(gemma, options, rows, tokens, reps, grammar=None, top_logprobs=0) -> list[float]:
    times = []
    for _ in range(reps):
        sampler = SequenceSampler(
            Options().updated({"seed": 0, **options}),
            gemma.info,
            GrammarConstraint(gemma.vocab, grammar) if grammar else None,
        )
        for row, token in zip(rows, tokens, strict=True):
            start = time.perf_counter_ns()
            sampler.sample(row)
            sampler.accept(token)  # the recorded token, so every pass sees the same states
            if top_logprobs:
                sampler.logprobs(row, token, top_logprobs)
            times.append((time.perf_counter_ns() - start) / 1e6)
        sampler.close()
    return times


USAGE = """Usage:
  sampling.py [--rows N] [--reps N]

Options:
  --rows N   logits rows collected from real decodes [default: 48]
  --reps N   timed passes over the rows [default: 5]
"""


def _namespace(**values: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(**values)


def main() -> None:
    values = docopt(USAGE)
    args = _namespace(rows=int(values["--rows"]), reps=int(values["--reps"]))
    gemma = Gemma(models.gemma())
    n_vocab = gemma.n_vocab
    text_rows, text_tokens = collect(
        gemma, "The history of the city of Paris begins", args.rows, None
    )
    json_rows, json_tokens = collect(
        gemma,
        'A person as JSON: {"name": "Ada", "age": 36}\nAnother person as JSON:',
        args.rows,
        JSON_GBNF,
    )
    gemma_grammar = lambda: L.llama_sampler_init_grammar(gemma.vocab, JSON_GBNF.encode(), b"root")  # noqa: E731
    penalties = lambda: L.llama_sampler_init_penalties(n_vocab, 64, 1.1, 0.0, 0.0)  # noqa: E731
    default_tail = [
        lambda: L.llama_sampler_init_top_k(40),
        lambda: L.llama_sampler_init_top_p(0.9, 1),
        lambda: L.llama_sampler_init_temp(0.8),
        lambda: L.llama_sampler_init_dist(0),
    ]
    figures = [
        ("greedy", {"temperature": 0}, None, [penalties, L.llama_sampler_init_greedy]),
        (
            "default (penalties, top_k 40, top_p 0.9, temp 0.8)",
            {},
            None,
            [penalties, *default_tail],
        ),
        (
            "mirostat 1",
            {"mirostat": 1},
            None,
            [
                penalties,
                lambda: L.llama_sampler_init_temp(0.8),
                lambda: L.llama_sampler_init_mirostat(n_vocab, 0, 5.0, 0.1, 100),
            ],
        ),
        (
            "mirostat 2",
            {"mirostat": 2},
            None,
            [
                penalties,
                lambda: L.llama_sampler_init_temp(0.8),
                lambda: L.llama_sampler_init_mirostat_v2(0, 5.0, 0.1),
            ],
        ),
        ("tfs 0.95 (top_k 0, top_p 1)", {"tfs_z": 0.95, "top_k": 0, "top_p": 1.0}, None, None),
        (
            "typical 0.9 (top_k 0, top_p 1)",
            {"typical_p": 0.9, "top_k": 0, "top_p": 1.0},
            None,
            [
                penalties,
                lambda: L.llama_sampler_init_typical(0.9, 1),
                lambda: L.llama_sampler_init_temp(0.8),
                lambda: L.llama_sampler_init_dist(0),
            ],
        ),
        ("JSON grammar + default", {}, JSON_GBNF, [penalties, gemma_grammar, *default_tail]),
        ("default + logprobs top 5", {}, None, None),
    ]
    print(
        f"rows: {len(text_rows)} of text, {len(json_rows)} of JSON; {n_vocab} tokens; {args.reps} passes"
    )
    for name, options, grammar, reference in figures:
        rows, tokens = (json_rows, json_tokens) if grammar else (text_rows, text_tokens)
        top = 5 if "logprobs" in name else 0
        ours = np.array(time_power(gemma, options, rows, tokens, args.reps, grammar, top))
        line = f"{name:52s} median {np.median(ours):6.3f} ms  p90 {np.percentile(ours, 90):6.3f} ms"
        if reference is not None:
            theirs = np.array(
                time_llama(
                    gemma, lambda r=reference: llama_chain(gemma, r), rows, tokens, args.reps
                )
            )
            line += f"   llama.cpp {np.median(theirs):7.3f} ms  ({np.median(theirs) / np.median(ours):5.1f}x)"
        elif top:

            def naive(row: np.ndarray, token: int) -> None:
                shifted = row.astype(np.float64) - row.max()
                log_softmax = shifted - np.log(np.exp(shifted).sum())
                np.argsort(-log_softmax)[:5]

            t0 = time.perf_counter_ns()
            for row, token in zip(rows, tokens, strict=True):
                naive(row, token)
            naive_ms = (time.perf_counter_ns() - t0) / 1e6 / len(rows)
            line += f"   (a naive full log-softmax + argsort alone: {naive_ms:.3f} ms)"
        else:
            line += "   llama.cpp: no such sampler any more"
        print(line, flush=True)
    gemma.close()


if __name__ == "__main__":
    main()
