"""Speculative decoding, the pure parts: draft proposals, verification, adaptive draft length.

A generating sequence normally feeds one token per step. With speculation it feeds its next
token followed by up to k *draft* tokens guessed for the positions after it, with logits kept
for each of them. One decode then verifies every guess: the token sampled from the first row is
the sequence's real next token; when it equals the first draft token, the second row (computed
with that draft token in the cache) gives the real token after it, and so on. The step emits
every real token up to and including the first one that differs from its draft (the correction;
when every draft is accepted, the token sampled from the last row is a bonus). The runner then
removes the KV cells of the rejected drafts (`seq_rm(seq, first rejected position, -1)`).

Where drafts come from:
- `NgramIndex`: prompt lookup (draftless). The sequence's last n tokens (n = 3, then 2) are
  looked up in its own prompt and output; when they occurred before, the tokens that followed
  that occurrence (its latest one) are the draft. Pays off when output repeats input: edits of
  a given text or code, quotations, extraction, JSON that repeats keys.
- a draft model (`DRAFT` in a Modelfile): a smaller model with the same vocabulary proposes its
  greedy continuation (see `power.engine.drafter`).

Verification is exact (`verify`): every row is sampled by the sequence's own `SequenceSampler`
exactly as plain decoding would sample it (penalties, grammar, top_k/top_p/min_p/typical,
temperature, Mirostat...), and a draft token counts as accepted when the token sampled equals
it. With greedy options the output is therefore identical to plain decoding, token for token.
With sampling it is the rejection sampling of speculative decoding (Leviathan et al., Chen et
al.) for a draft that proposes one token with certainty (q = 1 at the draft token t): accept t
with probability min(1, p(t)/q(t)) = p(t), else draw from p with t removed and renormalised.
Drawing one token from p by inverse CDF with a uniform u and accepting when it is t does exactly
that (P(accept) = p(t); given a rejection, the token drawn is distributed as p restricted to
tokens other than t, renormalised), and it consumes one uniform per emitted token as plain
decoding does: with a fixed seed, speculation changes neither the distribution nor the tokens.
`rejection_sample` is the textbook form, kept for the statistical tests that check both agree.
The sampler only ever `accept`s emitted tokens, so penalty history, Mirostat's mu and grammar
state see accepted tokens only.

Adaptive draft length (`DraftPolicy`): each sequence keeps an estimate of the probability that a
draft token is accepted given the previous one was (a moving average over the draft tokens it
has verified: the accepted ones and the first rejected one of each step), and drafts the k that
maximises expected tokens per unit of step cost, `(1 - a^(k+1)) / (1 - a) / cost(k)`, where
`cost(k)` is what the step costs the sequence with k drafts relative to its share of a plain
step (`draft_costs`, from the step times by batch size that `StepCosts` measures on the runner's
own steps: where a batch of 16 tokens costs little more than one, drafts are long; on a small
CPU the second token of a batch can cost as much as the first, and only long, nearly certain
drafts pay). When the estimate falls so low that k = 0, the sequence stops drafting; prompt
lookup keeps guessing and lets the tokens that come move the estimate (`PromptLookup`), a draft
model probes with one draft token every `retry_after` steps. No trio, no numpy beyond what
sampling uses, no ctypes: tested with hand-made logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np

from power.engine import truncation

#: n-gram sizes tried, longest first.
NGRAM_SIZES = (3, 2)
#: The default most draft tokens per step (the `draft_num_predict` option).
DEFAULT_MAX_DRAFT = 32


class NgramIndex:
    """Prompt lookup over one sequence's tokens: `extend` as tokens arrive, `propose(k)`.

    For each n in `sizes` it maps every n-gram to the position right after its latest
    occurrence that has a successor, so a lookup is one dict access per n, and extending by a
    token is one insertion per n (a prompt of 8k tokens is indexed in a few milliseconds)."""

    def __init__(self, tokens: Sequence[int] = (), sizes: Sequence[int] = NGRAM_SIZES) -> None:
        self.sizes = tuple(sorted(set(sizes), reverse=True))
        self.tokens: list[int] = []
        self._after: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        j = len(self.tokens)  # the position `token` takes: the successor of the n-grams before
        history = self.tokens
        for n in self.sizes:
            if j >= n:
                self._after[n][tuple(history[j - n : j])] = j
        history.append(int(token))

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the last n tokens
        (the longest n that occurred); [] when none did or k <= 0."""
        if k <= 0:
            return []
        history = self.tokens
        for n in self.sizes:
            if len(history) <= n:
                continue
            start = self._after[n].get(tuple(history[-n:]))
            if start is not None:
                return history[start : start + k]
        return []


def verify(
    sample_row: Callable[[int], int],
    draft: Sequence[int],
    is_last: Callable[[int, int], bool] = lambda token, n_emitted: False,
) -> list[int]:
    """The tokens one step emits for a sequence that fed its next token and `draft`.

    `sample_row(i)` samples (and accepts into the sequence's sampler) the token at logits row i:
    row 0 follows the next token, row i + 1 follows draft token i. Returns the emitted tokens
    t_0..t_m: t_j == draft[j] for j < m, and t_m is the first token that differs from its draft
    (or the bonus token after a fully accepted draft). `is_last(token, n_emitted)` ends the step
    early (an end-of-generation token, num_predict reached): rows after it are not sampled."""
    emitted: list[int] = []
    for i in range(len(draft) + 1):
        token = sample_row(i)
        emitted.append(token)
        if i == len(draft) or token != draft[i] or is_last(token, len(emitted)):
            break
    return emitted


def rejection_sample(
    ids: np.ndarray, probs: np.ndarray, draft: int, rng: np.random.Generator
) -> tuple[int, bool]:
    """Textbook speculative sampling for a certain draft token: accept `draft` with probability
    p(draft), else draw from p without it, renormalised. Returns (token, accepted)."""
    where = np.flatnonzero(ids == draft)
    p_draft = float(probs[where[0]]) if where.size else 0.0
    if rng.random() < p_draft:
        return int(draft), True
    residual = np.array(probs, dtype=np.float64)
    if where.size:
        residual[where[0]] = 0.0
    return int(ids[truncation.draw_index(residual, rng.random())]), False


def coupled_sample(
    ids: np.ndarray, probs: np.ndarray, draft: int, uniform: float
) -> tuple[int, bool]:
    """What `verify` does with a sampler's row: draw from p with `uniform` (inverse CDF) and
    accept when the draw is the draft token. Same law as `rejection_sample`, one uniform."""
    token = int(ids[truncation.draw_index(probs, uniform)])
    return token, token == draft


@attrs.define
class DraftPolicy:
    """How many draft tokens one sequence proposes per step (see the module docstring).

    `max_draft`: the most (the request's `draft_num_predict`); `cost`: one draft token's cost
    relative to a plain step; `acceptance`: the running estimate, from `prior`; `weight`: the
    moving average's weight of one observation; `retry_after`: steps without drafts before a
    one-token probe once the estimate has made k zero."""

    max_draft: int = DEFAULT_MAX_DRAFT
    cost: float = 0.2
    prior: float = 0.6
    weight: float = 0.2
    retry_after: int = 32
    acceptance: float = attrs.field(default=None)
    n_drafted: int = 0
    n_accepted: int = 0
    _idle_steps: int = 0

    def __attrs_post_init__(self) -> None:
        if self.acceptance is None:
            self.acceptance = self.prior

    def best_k(self, cost: DraftCost | None = None) -> int:
        """The draft length that maximises expected tokens per cost at the current estimate
        (`cost`: this step's cost of k drafts, see `DraftCost`; None: `self.cost`)."""
        return best_draft_length(
            self.acceptance, self.max_draft, self.cost if cost is None else cost
        )

    def next_k(self, cost: DraftCost | None = None) -> int:
        """The draft length for this step (a probe of 1 after `retry_after` idle steps)."""
        k = self.best_k(cost)
        if k > 0 or self.max_draft <= 0:
            return k
        self._idle_steps += 1
        if self._idle_steps >= self.retry_after:
            self._idle_steps = 0
            return 1
        return 0

    def record(self, n_drafted: int, n_accepted: int) -> None:
        """A step verified `n_drafted` draft tokens, of which the first `n_accepted` matched."""
        if n_drafted <= 0:
            return
        self.n_drafted += n_drafted
        self.n_accepted += n_accepted
        self.observe(n_drafted, n_accepted)

    def observe(self, n_drafted: int, n_accepted: int) -> None:
        """Update the estimate only: `record` without the counts, for guesses that were not
        verified (prompt lookup's, checked against the tokens that came while not drafting)."""
        if n_drafted <= 0:
            return
        a, w = self.acceptance, self.weight
        for _ in range(n_accepted):
            a += w * (1.0 - a)
        if n_accepted < n_drafted:  # the first rejection; later drafts say nothing
            a -= w * a
        self.acceptance = a


def step_draft_cost(n_generating: int, token_cost: float) -> float:
    """What one draft token costs relative to one sequence's share of a plain step.

    A plain step of N generating sequences costs about `t0 + N t` (t0: reading the weights once,
    t: one more token, its logits row included); `token_cost` is t / t0. A draft token adds t,
    and the sequence it serves gets a share `(t0 + N t) / N` of the step, so the relative cost is
    `N r / (1 + N r)` with r = `token_cost`: on gemma-3-270m on two cores (t0 ~ 8.5 ms,
    t ~ 4 ms, NOTES.md's 79 tok/s solo and 192 tok/s at 8), about 0.33 alone and 0.8 among
    eight: drafting pays off alone, and among many sequences only when nearly always right."""
    n_r = max(n_generating, 1) * token_cost
    return n_r / (1.0 + n_r)


#: What a step with k draft tokens costs one sequence, relative to its share of a plain step
#: (1 at k = 0): a number c for the linear `1 + c k`, or a function of k.
DraftCost = float | Callable[[int], float]


def best_draft_length(acceptance: float, max_draft: int, cost: DraftCost) -> int:
    """argmax over k in 0..max_draft of E[tokens per step] / step cost, where a step with k
    drafts emits (1 - a^(k+1)) / (1 - a) tokens on average and costs `cost(k)` (1 + cost * k
    for a number)."""
    relative = cost if callable(cost) else (lambda k, c=float(cost): 1.0 + c * k)
    a = min(max(acceptance, 0.0), 0.999999)
    best_k, best = 0, 1.0
    expected, power = 1.0, 1.0
    for k in range(1, max(max_draft, 0) + 1):
        power *= a
        expected += power
        value = expected / max(relative(k), 1e-9)
        if value > best + 1e-12:
            best_k, best = k, value
    return best_k


class PromptLookup:
    """The draftless speculation of one sequence: an `NgramIndex` over its prompt and output
    (built at its first proposal, then extended with what it generated) and its `DraftPolicy`.

    A lookup costs nothing but a dict access, so while the policy drafts nothing (drafts failed,
    or cost more than they bring) the lookup still guesses the next token, and the token that
    comes is checked against that guess (`DraftPolicy.observe`): the estimate follows the text
    (a copy that resumes after an edit) without paying for a verification, and drafting starts
    again as soon as guesses come true."""

    def __init__(self, policy: DraftPolicy) -> None:
        self.policy = policy
        self.index: NgramIndex | None = None
        self._n_indexed = 0  # generated tokens already in the index
        self._guess: int | None = None  # the token guessed, unverified, at the last proposal

    def propose(
        self,
        prompt: Sequence[int],
        generated: Sequence[int],
        limit: int,
        cost: DraftCost | None = None,
    ) -> list[int]:
        """Draft tokens for the step after `generated` (at most `limit`; `cost` of a draft
        token this step, see `DraftPolicy.next_k`); [] for none."""
        if self.index is None:
            self.index = NgramIndex(prompt)
        if self._n_indexed < len(generated):
            if self._guess is not None:
                self.policy.observe(1, int(generated[self._n_indexed] == self._guess))
            self.index.extend(generated[self._n_indexed :])
            self._n_indexed = len(generated)
        self._guess = None
        k = min(self.policy.next_k(cost), limit)
        if k <= 0:
            if limit > 0:
                guess = self.index.propose(1)
                self._guess = guess[0] if guess else None
            return []
        return self.index.propose(k)

    def record(self, n_drafted: int, n_accepted: int) -> None:
        self.policy.record(n_drafted, n_accepted)


def matched_prefix(emitted: Sequence[int], draft: Sequence[int]) -> int:
    """How many draft tokens `verify` accepted: the common prefix of `emitted` and `draft`."""
    n = 0
    for token, guess in zip(emitted, draft, strict=False):
        if token != guess:
            break
        n += 1
    return n


@attrs.define
class StepCosts:
    """The seconds a generation step takes by its number of tokens n (each generating
    sequence's next token and its drafts), measured on this machine, observed by the runner on
    its own steps: a moving average per n, and for every n >= 2 a least-squares line through
    those averages (weighted by how often each was seen), so that one noisy size cannot hide
    the sizes around it. A step of one token is kept apart: on a CPU the second token of a
    batch can cost as much as the first (llama.cpp switches kernels), while sixteen cost only
    six to nine times one; on a GPU sixteen typically cost little more than one. Until two
    sizes of 2 or more have been seen, the `prior` shape `1 + prior (n - 1)` stands in for the
    line (a modest slope, so that longer drafts get tried, and measured, once acceptance is
    high). Estimates never fall as n grows."""

    prior: float = 0.3
    weight: float = 0.25
    #: a size's weight in the line stops growing here (recent sizes are not drowned out)
    max_count: int = 16
    _seconds: dict[int, float] = attrs.field(factory=dict)
    _count: dict[int, int] = attrs.field(factory=dict)
    _estimate: Callable[[int], float] | None = attrs.field(default=None, init=False)

    def observe(self, n_tokens: int, seconds: float) -> None:
        if n_tokens <= 0 or not seconds > 0.0:
            return
        self._estimate = None
        old = self._seconds.get(n_tokens)
        self._seconds[n_tokens] = seconds if old is None else old + self.weight * (seconds - old)
        self._count[n_tokens] = min(self._count.get(n_tokens, 0) + 1, self.max_count)

    def _shape(self, n: int) -> float:
        return 1.0 + self.prior * (n - 1)

    def _line(self) -> tuple[float, float] | None:
        """(intercept, slope) of seconds against n over the sizes >= 2 measured; None until
        two such sizes are known, or when the fit is not increasing."""
        points = [(n, t, self._count[n]) for n, t in self._seconds.items() if n >= 2]
        if len(points) < 2:
            return None
        w = sum(c for _, _, c in points)
        mean_n = sum(n * c for n, _, c in points) / w
        mean_t = sum(t * c for _, t, c in points) / w
        var = sum(c * (n - mean_n) ** 2 for n, _, c in points) / w
        slope = sum(c * (n - mean_n) * (t - mean_t) for n, t, c in points) / w / var
        if slope <= 0.0:
            return None
        return mean_t - slope * mean_n, slope

    def seconds(self, n: int) -> float:
        """The estimated seconds of a step of `n` tokens (in the prior's units, a plain step of
        one token = 1, while nothing is measured)."""
        if self._estimate is None:  # rebuilt once after each observation, not per lookup
            self._estimate = self._estimator()
        return self._estimate(max(n, 1))

    def _estimator(self) -> Callable[[int], float]:
        one = self._seconds.get(1)
        line = self._line()
        known = [(size, t) for size, t in self._seconds.items() if size >= 2]
        largest = max(known) if known else None

        def estimate(n: int) -> float:
            if n == 1 and one is not None:
                return one
            if line is not None:
                value = line[0] + line[1] * n
            elif largest is not None:  # one size of 2 or more: the prior's shape through it
                value = largest[1] * self._shape(n) / self._shape(largest[0])
            elif one is not None:
                value = one * self._shape(n)
            else:
                value = self._shape(n)
            if one is not None:
                value = max(value, one)
            return max(value, 1e-9)

        return estimate

    def draft_costs(self, n_sequences: int, n_tokens: int) -> Callable[[int], float]:
        """`cost(k)` for a sequence that adds k drafts to a step that already holds `n_tokens`
        tokens of `n_sequences` generating sequences: (its share of the step + what the k
        tokens add) / its share."""
        base = self.seconds(n_tokens)
        share = base / max(n_sequences, 1)

        def cost(k: int) -> float:
            return (share + max(self.seconds(n_tokens + k) - base, 0.0)) / share

        return cost


@attrs.define
class LinearCosts:
    """A fixed cost curve, `1 + token_cost n` per step of n tokens (`token_cost` as in
    `step_draft_cost`): for tests, and for callers that know their hardware."""

    token_cost: float

    def observe(self, n_tokens: int, seconds: float) -> None:
        pass

    def draft_costs(self, n_sequences: int, n_tokens: int) -> Callable[[int], float]:
        share = (1.0 + self.token_cost * n_tokens) / max(n_sequences, 1)
        return lambda k: 1.0 + self.token_cost * k / share
