"""Per-sequence token sampling: penalties, grammar, truncation chain, Mirostat, logprobs.

A `SequenceSampler` belongs to one generating sequence. The engine calls, for each row of
logits the model produced for that sequence:

    token = sampler.sample(row)      # row: float32[n_vocab], owned by the caller, never modified
    sampler.accept(token)            # penalty history, Mirostat's mu, grammar state
    sampler.logprobs(row, token, n)  # only when the request asked for logprobs

and `sampler.close()` once the sequence ends (it frees the grammar it was given).

The chain is llama.cpp's default order (as it was when it still had tail-free sampling):
penalties -> grammar -> top_k -> tail-free -> typical -> top_p -> min_p -> temperature -> draw.
With Mirostat (1 or 2) the truncation steps are replaced: penalties -> grammar -> temperature ->
Mirostat. A temperature <= 0 means greedy: penalties -> grammar -> argmax.

Cost on a 262,144-token row: no step sorts the whole vocabulary (see `power.engine.truncation`);
penalties copy the row once (0.02 ms) and patch at most `repeat_last_n` entries; the grammar is
asked about candidates in bands of decreasing logit until its answer provably covers what the
rest of the chain needs. Pure numpy: no trio, no ctypes (the grammar object brings its own).

Robustness: every option value `power.options` accepts, however extreme (a repeat_penalty of
1e-45, a presence_penalty of -100, a temperature of 1e-30), gives a valid distribution: penalised
logits are clamped to +-`LOGIT_BOUND`, temperature scaling subtracts the maximum first, and a
positive temperature below `MIN_TEMPERATURE` counts as it. A row with NaN logits raises
`SamplingError` (the engine fails that one sequence), never an obscure numpy error.

Penalty history: `observe(prompt)` keeps only the last `repeat_last_n` tokens (a deque and a
Counter updated in C: O(that window), whatever the prompt's length); `accept` updates them in
O(1), and the arrays the penalty step needs are rebuilt at most once per sampled token, lazily,
in the worker thread that samples.

Randomness: each sampler owns a `numpy.random.Generator` seeded from `options.seed` (a random
seed when it is negative) and draws exactly one uniform number per non-greedy `sample`, so the
same seed, options and rows give the same tokens whatever other sequences do.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
from collections.abc import Iterable
from typing import Protocol

import attrs
import numpy as np

from power.engine import truncation
from power.engine.types import SamplingError
from power.options import Options

#: The grammar is asked about tokens in these bands (logit gaps below the row's maximum).
GRAMMAR_BANDS = (4.0, 8.0, 12.0, 16.0, 20.0, 25.0, 30.0, 40.0, math.inf)
#: Grammar bands also stop once the unexamined tokens' total mass is below this fraction of
#: the allowed mass found so far (what is left out cannot move the distribution by more).
GRAMMAR_MASS_EPSILON = 1e-4
#: Penalised and infinite logits are clamped to +-this: far beyond any real logit, yet twice it
#: and its quotient by the smallest temperature still fit a float32.
LOGIT_BOUND = 1e30
#: A positive temperature below this counts as this (already greedy in all but exact ties).
MIN_TEMPERATURE = 1e-6


def _int_tuple(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@functools.cache
def _all_ids(n: int) -> np.ndarray:
    """0..n-1, shared and read-only (allocating 2 MiB per token costs more than sampling)."""
    ids = np.arange(n)
    ids.flags.writeable = False
    return ids


@attrs.frozen
class VocabInfo:
    """What the sampler needs to know about the model's vocabulary."""

    n_vocab: int
    newline_ids: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)
    eog_ids: tuple[int, ...] = attrs.field(default=(), converter=_int_tuple)


class TokenConstraint(Protocol):
    """A grammar: which candidate tokens may come next, and the state after a token."""

    def allowed(self, candidate_ids: np.ndarray, candidate_logits: np.ndarray) -> np.ndarray:
        """A boolean mask over the candidates (True: the token may come next)."""
        ...

    def accept(self, token: int) -> None:
        """Advance past `token` (which must be allowed)."""
        ...

    def close(self) -> None: ...


@attrs.define(slots=True)
class Candidates:
    """A subset of the vocabulary: token `ids` (None: all, in order) and their `logits`."""

    ids: np.ndarray | None
    logits: np.ndarray

    @property
    def size(self) -> int:
        return int(self.logits.size)

    def token_ids(self, positions: np.ndarray | None = None) -> np.ndarray:
        if self.ids is None:
            if positions is None:
                return _all_ids(self.logits.size)
            return np.asarray(positions)
        return self.ids if positions is None else self.ids[positions]

    def take(self, positions: np.ndarray | None) -> Candidates:
        """The candidates at `positions` (None: unchanged)."""
        if positions is None:
            return self
        return Candidates(self.token_ids(positions), self.logits[positions])


class SequenceSampler:
    """Samples the tokens of one sequence; see the module docstring for the contract.

    `grammar`, when given, is owned by the sampler from then on and freed by `close()`.
    Not thread-safe: one sequence, one thread at a time.
    """

    def __init__(
        self,
        options: Options,
        vocab: VocabInfo,
        grammar: TokenConstraint | None = None,
        *,
        n_ctx: int | None = None,
    ) -> None:
        """`n_ctx`: the sequence's real context length, the window of `repeat_last_n: -1`
        (default: `options.num_ctx`)."""
        self.options = options
        self.vocab = vocab
        self.grammar = grammar
        self.rng = np.random.default_rng(None if options.seed < 0 else options.seed)
        last_n = options.repeat_last_n
        if last_n < 0:
            last_n = n_ctx if n_ctx is not None else options.num_ctx
        self._penalties_active = last_n > 0 and (
            options.repeat_penalty != 1.0
            or options.frequency_penalty != 0.0
            or options.presence_penalty != 0.0
        )
        self._history: collections.deque[int] = collections.deque(maxlen=max(last_n, 1))
        self._counts: collections.Counter[int] = collections.Counter()  # of _history
        self._penalty_ids = np.zeros(0, dtype=np.int64)
        self._penalty_counts = np.zeros(0, dtype=np.float32)
        self._stale = False  # the arrays above lag behind _history
        self._unpenalized = frozenset() if options.penalize_newline else set(vocab.newline_ids)
        #: penalties outside everyday values take the careful path (no warnings, clamping)
        self._extreme = not (
            1e-3 <= options.repeat_penalty <= 1e3
            and abs(options.frequency_penalty) <= 1e3
            and abs(options.presence_penalty) <= 1e3
        )
        #: Mirostat's running target surprise (bits).
        self.mu = 2.0 * options.mirostat_tau
        #: The last distribution drawn from: (token ids, probabilities), for Mirostat's update.
        self.last_distribution: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ public API
    def sample(self, logits: np.ndarray) -> int:
        """The next token for this row of logits (float32[n_vocab], not modified).

        Raises SamplingError when the row holds NaN or the grammar allows no token."""
        if self.options.temperature <= 0.0:
            return self._greedy(logits)
        ids, probs = self.distribution(logits)
        return int(ids[truncation.draw_index(probs, self.rng.random())])

    def distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The final distribution `sample` draws from: (token ids, probabilities summing to 1).

        Greedy options give the argmax with probability 1. With Mirostat, it is kept for the
        update of mu in `accept`."""
        options = self.options
        if options.temperature <= 0.0:
            return np.array([self._greedy(logits)]), np.ones(1)
        if options.mirostat in (1, 2):
            self.last_distribution = self._mirostat_distribution(logits)
            return self.last_distribution
        return self._chain_distribution(logits)

    def accept(self, token: int) -> None:
        """Record `token` as the sequence's next one: penalty history, Mirostat, grammar."""
        token = int(token)
        if self.options.mirostat in (1, 2) and self.last_distribution is not None:
            ids, probs = self.last_distribution
            if ids is _all_ids(ids.size):
                where = np.array([token]) if token < ids.size else np.zeros(0, dtype=np.int64)
            else:
                where = np.flatnonzero(ids == token)
            if where.size and probs[where[0]] > 0.0:
                surprise = -math.log2(float(probs[where[0]]))
                self.mu -= self.options.mirostat_eta * (surprise - self.options.mirostat_tau)
        self.last_distribution = None
        if self.grammar is not None:
            self.grammar.accept(token)
        self._remember(token)

    def observe(self, tokens: Iterable[int]) -> None:
        """Add tokens (for example the prompt's) to the penalty history only.

        Only the last `repeat_last_n` of them can matter, so only those are looked at: O(that
        window), whatever the prompt's length."""
        if not self._penalties_active:
            return
        window = self._history.maxlen or 0
        if not isinstance(tokens, list | tuple):
            tokens = list(tokens)
        tail = tokens[-window:] if len(tokens) > window else tokens
        if not tail:
            return
        if not self._history:  # the usual case, a prompt into a fresh sampler: in bulk, in C
            self._history.extend(tail)
            self._counts.update(self._history)
        else:
            for token in tail:
                self._push(token)
        self._stale = True

    def logprobs(
        self, logits: np.ndarray, token: int, top_n: int
    ) -> tuple[float, list[tuple[int, float]]]:
        """`token`'s log-probability under the log-softmax of the raw `logits`, and the `top_n`
        most probable tokens with theirs (most probable first)."""
        logits = _checked(logits)
        maximum = float(logits.max())
        total = float(np.exp(logits - np.float32(maximum)).sum(dtype=np.float64))
        log_total = maximum + math.log(total)
        top: list[tuple[int, float]] = []
        if top_n > 0:
            positions = truncation.top_k_positions(logits, top_n)
            if positions is None:
                positions = np.arange(logits.size)
            positions = positions[np.argsort(-logits[positions], kind="stable")]
            top = [(int(i), float(logits[i]) - log_total) for i in positions]
        return float(logits[int(token)]) - log_total, top

    def close(self) -> None:
        """Free the grammar, if any. Idempotent."""
        if self.grammar is not None:
            self.grammar.close()
            self.grammar = None

    # ------------------------------------------------------------------ penalties
    def _remember(self, token: int) -> None:
        if self._penalties_active:
            self._push(token)
            self._stale = True

    def _push(self, token: int) -> None:
        """Append to the window, O(1)."""
        history = self._history
        if len(history) == history.maxlen:
            oldest = history[0]
            self._counts[oldest] -= 1
            if self._counts[oldest] <= 0:
                del self._counts[oldest]
        history.append(token)
        self._counts[token] += 1

    def _penalty_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct tokens of the window and their counts, rebuilt (without a Python loop)
        only after the history changed: at most once per sampled token."""
        if self._stale:
            counts = self._counts
            ids = np.fromiter(counts.keys(), np.int64, len(counts))
            values = np.fromiter(counts.values(), np.float32, len(counts))
            if self._unpenalized:
                keep = ~np.isin(ids, list(self._unpenalized))
                ids, values = ids[keep], values[keep]
            self._penalty_ids, self._penalty_counts = ids, values
            self._stale = False
        return self._penalty_ids, self._penalty_counts

    def _penalized(self, logits: np.ndarray, *, check: bool = True) -> np.ndarray:
        """The row (`_checked` unless `check` is False) with repeat/frequency/presence
        penalties (a copy when any applies). Penalised values are clamped to +-LOGIT_BOUND, so
        extreme penalties stay finite."""
        if check:
            logits = _checked(logits)
        if not self._penalties_active:
            return logits
        ids, counts = self._penalty_arrays()
        if ids.size == 0:
            return logits
        options = self.options
        with np.errstate(all="ignore") if self._extreme else contextlib.nullcontext():
            values = logits[ids].astype(np.float32)
            repeat = np.float32(options.repeat_penalty)
            values = np.where(values <= 0, values * repeat, values / repeat)
            values -= counts * np.float32(options.frequency_penalty) + np.float32(
                options.presence_penalty
            )
        if self._extreme or not np.isfinite(values).all():
            values = np.nan_to_num(
                values, nan=-LOGIT_BOUND, posinf=LOGIT_BOUND, neginf=-LOGIT_BOUND
            )
            np.clip(values, -LOGIT_BOUND, LOGIT_BOUND, out=values)
        out = logits.copy()
        out[ids] = values
        return out

    # ------------------------------------------------------------------ grammar
    def _constrained(self, logits: np.ndarray, need_k: int) -> Candidates:
        """The penalized row restricted by the grammar.

        The grammar is asked about bands of decreasing logit until `need_k` allowed tokens are
        found (so the top-k of the allowed tokens is exact; need_k = 1 for greedy), or until
        the unexamined tokens' total mass is below `GRAMMAR_MASS_EPSILON` of the allowed mass.
        The last band is the whole rest of the vocabulary, so a grammar that allows only
        improbable tokens still gets one of them. Asking llama.cpp's grammar about a token
        costs 0.1-0.5 us, so the whole vocabulary would cost 30-130 ms."""
        row = Candidates(None, logits)
        if self.grammar is None:
            return row
        maximum = float(logits.max())
        weights = None
        remaining = allowed_mass = 0.0
        kept: list[np.ndarray] = []
        n_allowed = 0
        upper = math.inf
        for gap in GRAMMAR_BANDS:
            lower = maximum - gap
            if upper == math.inf:
                band = np.flatnonzero(logits >= lower)
            else:
                band = np.flatnonzero((logits >= lower) & (logits < upper))
            upper = lower
            allowed = band
            if band.size:
                allowed = band[np.asarray(self.grammar.allowed(band, logits[band]), dtype=bool)]
                if allowed.size:
                    kept.append(allowed)
                    n_allowed += allowed.size
            if math.isinf(gap) or n_allowed == 0:
                continue
            if need_k > 0 and n_allowed >= need_k:
                break
            if weights is None:
                weights = np.exp(logits - np.float32(maximum))
                allowed_mass = float(weights[np.concatenate(kept)].sum(dtype=np.float64))
                remaining = float(weights[logits < lower].sum(dtype=np.float64))
            else:
                allowed_mass += float(weights[allowed].sum(dtype=np.float64))
                remaining -= float(weights[band].sum(dtype=np.float64))
            if remaining <= GRAMMAR_MASS_EPSILON * allowed_mass:
                break
        positions = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
        if positions.size == 0:
            raise SamplingError("the grammar allows no token at all")
        return Candidates(positions, logits[positions])

    # ------------------------------------------------------------------ chains
    def _greedy(self, logits: np.ndarray) -> int:
        if self.grammar is None:
            # no separate finiteness pass: argmax lands on a NaN if there is one
            penalized = self._penalized(logits, check=False)
            token = int(np.argmax(penalized))
            if math.isnan(float(penalized[token])):
                raise SamplingError("the model produced NaN logits")
            return token
        penalized = self._penalized(logits)
        candidates = self._constrained(penalized, need_k=1)
        return int(candidates.token_ids()[int(np.argmax(candidates.logits))])

    def _chain_distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        options = self.options
        candidates = self._constrained(self._penalized(logits), need_k=max(options.top_k, 0))
        if options.top_k > 0:
            candidates = candidates.take(
                truncation.top_k_positions(candidates.logits, options.top_k)
            )
        steps = (
            (options.tfs_z < 1.0, truncation.tail_free_positions, options.tfs_z),
            (options.typical_p < 1.0, truncation.typical_positions, options.typical_p),
            (options.top_p < 1.0, truncation.top_p_positions, options.top_p),
            (options.min_p > 0.0, truncation.min_p_positions, options.min_p),
        )
        for active, positions_of, parameter in steps:
            if active:
                candidates = candidates.take(positions_of(candidates.logits, parameter))
        return candidates.token_ids(), truncation.softmax(_scaled(candidates.logits, options))

    def _mirostat_distribution(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        options = self.options
        candidates = self._constrained(self._penalized(logits), need_k=0)
        scaled = _scaled(candidates.logits, options)
        if options.mirostat == 1:
            positions = truncation.mirostat_v1_positions(scaled, self.mu, self.vocab.n_vocab)
        else:
            positions = truncation.mirostat_v2_positions(scaled, self.mu)
        if positions is not None:
            scaled = scaled[positions]
        return candidates.token_ids(positions), truncation.softmax(scaled)


def _checked(logits: np.ndarray) -> np.ndarray:
    """`logits` if finite (the usual case: one vectorised pass), else a copy with +-inf clamped
    to +-LOGIT_BOUND; a row with NaN raises SamplingError (the model's output is broken)."""
    if np.isfinite(logits).all():
        return logits
    if np.isnan(logits).any():
        raise SamplingError("the model produced NaN logits")
    return np.clip(logits, -LOGIT_BOUND, LOGIT_BOUND)


def _scaled(logits: np.ndarray, options: Options) -> np.ndarray:
    """`logits` divided by the temperature, shifted so that the largest is 0 (finite for any
    finite temperature: a smaller one counts as MIN_TEMPERATURE)."""
    temperature = max(float(options.temperature), MIN_TEMPERATURE)
    with np.errstate(over="ignore", under="ignore"):
        if logits.size > truncation.SMALL:
            return (logits - np.float32(logits.max())) / np.float32(temperature)
        shifted = logits.astype(np.float64)
        return (shifted - shifted.max()) / temperature
