"""SequenceSampler against a straightforward full-vocabulary reference of llama.cpp's samplers.

The reference below sorts the whole vocabulary at every step, in float64, exactly as the
definitions read; the sampler under test cuts candidates first and must give the same final
distribution (same support, same probabilities) on hand-made rows.
"""

from __future__ import annotations

import collections
import math

import attrs
import numpy as np
import pytest

from power.engine import truncation
from power.engine.sampling import SequenceSampler, VocabInfo
from power.engine.types import SamplingError
from power.options import Options

N_VOCAB = 50_000


# ---------------------------------------------------------------- the reference


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _sort_desc(ids: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-logits, kind="stable")
    return ids[order], logits[order]


def reference_distribution(
    row: np.ndarray,
    options: Options,
    history: list[int] = (),
    newline_ids: tuple[int, ...] = (),
    mu: float | None = None,
    allowed: np.ndarray | None = None,
) -> dict[int, float]:
    """The final distribution, token id -> probability, computed the slow and obvious way."""
    logits = row.astype(np.float64).copy()
    last_n = options.repeat_last_n if options.repeat_last_n >= 0 else options.num_ctx
    if last_n > 0:
        counts = collections.Counter(list(history)[-last_n:])
        for token, count in counts.items():
            if token in newline_ids and not options.penalize_newline:
                continue
            value = logits[token]
            value = value * options.repeat_penalty if value <= 0 else value / options.repeat_penalty
            value -= count * options.frequency_penalty + options.presence_penalty
            logits[token] = value
    ids = np.arange(row.size)
    if allowed is not None:
        ids = ids[allowed]
    values = logits[ids]
    if options.temperature <= 0:
        return {int(ids[np.argmax(values)]): 1.0}
    if options.mirostat:
        values = values / options.temperature
        ids, values = _sort_desc(ids, values)
        p = _softmax(values)
        if options.mirostat == 2:
            n_keep = max(1, int(np.sum(-np.log2(p) <= mu)))
        else:
            n = min(99, ids.size - 1)
            t = np.array([math.log((i + 2) / (i + 1)) for i in range(n)])
            b = np.array([math.log(p[i] / p[i + 1]) for i in range(n)])
            s_hat = float((t * b).sum() / (t * t).sum())
            eps = s_hat - 1
            k = ((eps * 2**mu) / (1 - row.size ** (-eps))) ** (1 / s_hat)
            n_keep = max(int(k), 1) if math.isfinite(k) else ids.size
        ids, values = ids[:n_keep], values[:n_keep]
        return dict(zip(ids.tolist(), _softmax(values).tolist(), strict=True))
    if 0 < options.top_k < ids.size:
        ids, values = _sort_desc(ids, values)
        ids, values = ids[: options.top_k], values[: options.top_k]
    if options.tfs_z < 1.0 and ids.size > 2:
        ids, values = _sort_desc(ids, values)
        p = _softmax(values)
        second = np.abs(np.diff(p, 2))
        total = second.sum()
        second = second / total if total > 1e-6 else np.full(second.size, 1 / second.size)
        last = ids.size
        cumulative = 0.0
        for i, d in enumerate(second):
            cumulative += d
            if cumulative > options.tfs_z and i >= 1:
                last = i
                break
        ids, values = ids[:last], values[:last]
    if options.typical_p < 1.0 and ids.size > 1:
        p = _softmax(values)
        entropy = -(p * np.log(p)).sum()
        order = np.argsort(np.abs(-np.log(p) - entropy), kind="stable")
        cumulative = np.cumsum(p[order])
        last = int(np.argmax(cumulative > options.typical_p)) + 1
        if not (cumulative > options.typical_p).any():
            last = ids.size
        ids, values = ids[order[:last]], values[order[:last]]
    if options.top_p < 1.0 and ids.size > 1:
        ids, values = _sort_desc(ids, values)
        cumulative = np.cumsum(_softmax(values))
        hits = np.flatnonzero(cumulative >= options.top_p)
        last = int(hits[0]) + 1 if hits.size else ids.size
        ids, values = ids[:last], values[:last]
    if options.min_p > 0.0 and ids.size > 1:
        p = _softmax(values)
        keep = p >= options.min_p * p.max()
        ids, values = ids[keep], values[keep]
    probs = _softmax(values / options.temperature)
    return dict(zip(ids.tolist(), probs.tolist(), strict=True))


# ---------------------------------------------------------------- hand-made rows


def peaked_row(seed: int, n: int = N_VOCAB) -> np.ndarray:
    """A head of 30 tokens well above a long, low tail (most of the vocabulary is negligible)."""
    rng = np.random.default_rng(seed)
    row = rng.normal(-8.0, 3.0, n).astype(np.float32)
    head = rng.choice(n, 30, replace=False)
    row[head] = rng.normal(14.0, 2.5, 30).astype(np.float32)
    return row


def heavy_tail_row(seed: int, n: int = N_VOCAB) -> np.ndarray:
    """Shaped like a real model's row: a broad normal bulk and a few clear leaders."""
    rng = np.random.default_rng(seed)
    row = rng.normal(0.0, 4.7, n).astype(np.float32)
    head = rng.choice(n, 8, replace=False)
    row[head] += rng.uniform(4.0, 10.0, 8).astype(np.float32)
    return row


def flat_row(seed: int, n: int = N_VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, n).astype(np.float32)


ROWS = {
    "peaked": peaked_row,
    "heavy": heavy_tail_row,
    "flat": flat_row,
}

NEUTRAL = {"repeat_penalty": 1.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
CHAINS = {
    "default": {},
    "top_k_1": {"top_k": 1},
    "top_p_only": {**NEUTRAL, "top_p": 0.9},
    "min_p_only": {**NEUTRAL, "min_p": 0.05},
    "tfs_only": {**NEUTRAL, "tfs_z": 0.95},
    "tfs_k": {**NEUTRAL, "top_k": 40, "tfs_z": 0.9},
    "typical_only": {**NEUTRAL, "typical_p": 0.9},
    "typical_k": {**NEUTRAL, "top_k": 100, "typical_p": 0.5},
    "everything": {
        "top_k": 200,
        "tfs_z": 0.97,
        "typical_p": 0.95,
        "top_p": 0.95,
        "min_p": 0.01,
        "temperature": 0.7,
    },
    "hot": {**NEUTRAL, "temperature": 1.7},
    "no_truncation": {**NEUTRAL},
    "mirostat1": {"mirostat": 1, "temperature": 1.0},
    "mirostat2": {"mirostat": 2, "temperature": 0.9},
    "mirostat2_low": {"mirostat": 2, "mirostat_tau": 1.0},
    "penalties": {
        "repeat_penalty": 1.3,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.7,
        "repeat_last_n": 8,
        "top_k": 50,
    },
}


def make_sampler(overrides: dict, seed: int = 1, newline_ids=(), n_vocab=N_VOCAB, grammar=None):
    options = Options().updated({"seed": seed, **overrides})
    vocab = VocabInfo(n_vocab=n_vocab, newline_ids=newline_ids, eog_ids=[1])
    return SequenceSampler(options, vocab, grammar=grammar)


def assert_same_distribution(got: tuple[np.ndarray, np.ndarray], want: dict[int, float]) -> None:
    ids, probs = got
    got_map = collections.defaultdict(float)
    for token, prob in zip(ids.tolist(), probs.tolist(), strict=True):
        got_map[token] += prob
    assert set(got_map) == set(want), (len(got_map), len(want))
    keys = sorted(want)
    np.testing.assert_allclose([got_map[k] for k in keys], [want[k] for k in keys], atol=2e-6)
    assert math.isclose(sum(got_map.values()), 1.0, rel_tol=1e-6)


def assert_close_distribution(
    got: tuple[np.ndarray, np.ndarray], want: dict[int, float], total_variation: float
) -> None:
    ids, probs = got
    got_map = dict(zip(ids.tolist(), probs.tolist(), strict=True))
    keys = set(got_map) | set(want)
    distance = sum(abs(got_map.get(k, 0.0) - want.get(k, 0.0)) for k in keys) / 2
    assert distance <= total_variation, distance


@pytest.mark.parametrize("row_kind", sorted(ROWS))
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_matches_full_vocabulary_reference(row_kind: str, chain: str) -> None:
    overrides = CHAINS[chain]
    for seed in range(3):
        row = ROWS[row_kind](seed)
        sampler = make_sampler(overrides)
        history = [int(t) for t in np.argsort(-row)[:5]] + [7, 7, 11]
        sampler.observe(history)
        got = sampler.distribution(row)
        want = reference_distribution(row, sampler.options, history, mu=sampler.mu)
        assert_same_distribution(got, want)


def test_full_size_vocabulary_matches_reference() -> None:
    n = 262_144
    for overrides in ({}, CHAINS["typical_only"], CHAINS["tfs_only"], CHAINS["mirostat1"]):
        row = heavy_tail_row(5, n)
        sampler = make_sampler(overrides, n_vocab=n)
        assert_same_distribution(
            sampler.distribution(row), reference_distribution(row, sampler.options, mu=sampler.mu)
        )


def test_the_row_is_not_modified() -> None:
    row = heavy_tail_row(0)
    before = row.copy()
    for overrides in CHAINS.values():
        sampler = make_sampler(overrides)
        sampler.observe(range(20))
        for _ in range(3):
            sampler.accept(sampler.sample(row))
        sampler.logprobs(row, 3, 5)
    np.testing.assert_array_equal(row, before)


# ---------------------------------------------------------------- penalties


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    row = np.zeros(10, dtype=np.float32)
    row[2], row[3] = 2.0, -2.0
    sampler = make_sampler({"repeat_penalty": 2.0, "frequency_penalty": 0.25}, n_vocab=10)
    sampler.observe([2, 3, 3])
    penalized = sampler._penalized(row)
    assert penalized[2] == pytest.approx(2.0 / 2.0 - 0.25)
    assert penalized[3] == pytest.approx(-2.0 * 2.0 - 0.5)
    assert penalized[4] == 0.0


def test_repeat_last_n_forgets_old_tokens_and_zero_disables() -> None:
    row = np.ones(10, dtype=np.float32)
    sampler = make_sampler({"repeat_penalty": 2.0, "repeat_last_n": 2}, n_vocab=10)
    sampler.observe([5, 6, 7])
    penalized = sampler._penalized(row)
    assert penalized[5] == 1.0 and penalized[6] == 0.5 and penalized[7] == 0.5
    off = make_sampler({"repeat_penalty": 2.0, "repeat_last_n": 0}, n_vocab=10)
    off.observe([5])
    assert off._penalized(row) is row


def test_penalize_newline_false_keeps_the_newline_logit() -> None:
    row = np.full(10, 3.0, dtype=np.float32)
    sampler = make_sampler(
        {"repeat_penalty": 1.5, "penalize_newline": False}, newline_ids=[4], n_vocab=10
    )
    sampler.observe([4, 5])
    penalized = sampler._penalized(row)
    assert penalized[4] == 3.0 and penalized[5] == 2.0
    want = reference_distribution(row, sampler.options, [4, 5], newline_ids=(4,))
    assert_same_distribution(sampler.distribution(row), want)


def test_presence_penalty_can_change_the_greedy_choice() -> None:
    row = np.array([0.0, 5.0, 4.5, 0.0], dtype=np.float32)
    sampler = make_sampler(
        {"temperature": 0, "repeat_penalty": 1.0, "presence_penalty": 1.0}, n_vocab=4
    )
    assert sampler.sample(row) == 1
    sampler.accept(1)
    assert sampler.sample(row) == 2


# ---------------------------------------------------------------- what each sampler does


def test_greedy_is_the_argmax() -> None:
    row = heavy_tail_row(3)
    sampler = make_sampler({"temperature": 0.0, "repeat_penalty": 1.0})
    assert sampler.sample(row) == int(np.argmax(row))


def test_tail_free_keeps_the_head_before_the_knee() -> None:
    # Six tokens falling geometrically, then a cliff down to a long flat tail: the curvature is
    # concentrated at the cliff, so the tail goes and (llama.cpp's indexing: the second
    # difference at i belongs to token i + 1) the head up to the knee stays.
    row = np.full(5000, -2.0, dtype=np.float32)
    head = [10, 20, 30, 40, 50, 60]
    row[head] = [9.0, 8.5, 8.0, 7.5, 7.0, 6.5]
    kept = truncation.tail_free_positions(row, 0.95)
    assert kept.tolist() == head[:5]
    assert truncation.tail_free_positions(row, 0.5).tolist() == head[:1]
    assert truncation.tail_free_positions(row, 1.0) is None
    sampler = make_sampler({**NEUTRAL, "tfs_z": 0.95}, n_vocab=5000)
    ids, _ = sampler.distribution(row)
    assert sorted(ids.tolist()) == head[:5]


def test_typical_keeps_surprise_near_the_entropy_and_can_drop_the_top_token() -> None:
    # p = [0.4, 0.1 x 6]: entropy 1.75 nats; the top token's surprise (0.92) is further from it
    # than the others' (2.30), so typical sampling with p = 0.45 keeps five 0.1 tokens.
    probs = np.array([0.4] + [0.1] * 6)
    row = np.log(probs).astype(np.float32)
    kept = truncation.typical_positions(row, 0.45)
    assert 0 not in kept.tolist() and kept.size == 5
    ids, dist = make_sampler({**NEUTRAL, "typical_p": 0.45}, n_vocab=7).distribution(row)
    assert 0 not in ids.tolist()
    np.testing.assert_allclose(dist, 0.2)


def test_min_p_and_top_p() -> None:
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    row = np.log(probs).astype(np.float32)
    assert sorted(truncation.min_p_positions(row, 0.2).tolist()) == [0, 1, 2]
    assert truncation.top_p_positions(row, 0.8).tolist() == [0, 1]
    assert truncation.top_p_positions(row, 0.81).tolist() == [0, 1, 2]


def test_mirostat_v2_mu_moves_toward_tau() -> None:
    row = heavy_tail_row(1)  # entropy 4.4 bits: any tau below it can be reached
    for tau in (2.0, 3.5):
        sampler = make_sampler({"mirostat": 2, "mirostat_tau": tau, "mirostat_eta": 0.1})
        assert sampler.mu == 2 * tau
        surprises = []
        for _ in range(600):
            ids, probs = sampler.distribution(row)
            before = sampler.mu
            token = sampler.sample(row)
            p = probs[ids.tolist().index(token)]
            sampler.accept(token)
            surprise = -math.log2(p)
            surprises.append(surprise)
            # mu rises when the observed surprise was below tau, falls when above
            assert (sampler.mu - before) * (tau - surprise) >= 0
        assert abs(np.mean(surprises[200:]) - tau) < 0.5


def test_mirostat_v1_targets_tau() -> None:
    row = peaked_row(2)  # entropy 3.2 bits
    sampler = make_sampler({"mirostat": 1, "mirostat_tau": 2.0, "mirostat_eta": 0.1})
    surprises = []
    for _ in range(600):
        ids, probs = sampler.distribution(row)
        token = sampler.sample(row)
        surprises.append(-math.log2(probs[ids.tolist().index(token)]))
        sampler.accept(token)
    assert abs(np.mean(surprises[200:]) - 2.0) < 0.5


# ---------------------------------------------------------------- randomness


def test_same_seed_same_draws_whatever_else_runs() -> None:
    rows = [heavy_tail_row(i) for i in range(20)]
    first = make_sampler({}, seed=42)
    other = make_sampler({}, seed=7)
    second = make_sampler({}, seed=42)
    a = []
    for row in rows:
        a.append(first.sample(row))
        first.accept(a[-1])
        other.accept(other.sample(row))
    b = []
    for row in rows:
        b.append(second.sample(row))
        second.accept(b[-1])
    assert a == b
    unseeded = [make_sampler({**NEUTRAL}, seed=-1).sample(flat_row(0)) for _ in range(5)]
    assert len(set(unseeded)) > 1


def test_draws_follow_the_distribution() -> None:
    row = np.log(np.array([0.5, 0.3, 0.2])).astype(np.float32)
    sampler = make_sampler({**NEUTRAL}, n_vocab=3)
    counts = collections.Counter(sampler.sample(row) for _ in range(4000))
    assert abs(counts[0] / 4000 - 0.5) < 0.04 and abs(counts[2] / 4000 - 0.2) < 0.04


def test_draw_index_on_a_large_row_scans_blocks_correctly() -> None:
    probs = np.zeros(N_VOCAB, dtype=np.float32)
    probs[[10, 1023, 1024, 40_000, N_VOCAB - 1]] = [0.1, 0.2, 0.3, 0.3, 0.1]
    rng = np.random.default_rng(0)
    counts = collections.Counter(truncation.draw_index(probs, rng.random()) for _ in range(4000))
    assert set(counts) == {10, 1023, 1024, 40_000, N_VOCAB - 1}
    assert abs(counts[1024] / 4000 - 0.3) < 0.04 and abs(counts[N_VOCAB - 1] / 4000 - 0.1) < 0.03
    assert truncation.draw_index(probs, 0.0) == 10
    assert truncation.draw_index(probs, 0.999999) == N_VOCAB - 1


# ---------------------------------------------------------------- logprobs


def test_logprobs_are_the_log_softmax_of_the_raw_row() -> None:
    row = heavy_tail_row(4)
    sampler = make_sampler({"repeat_penalty": 2.0})
    sampler.observe(range(100))
    reference = row.astype(np.float64) - np.log(np.exp(row.astype(np.float64)).sum())
    value, top = sampler.logprobs(row, 17, 5)
    assert value == pytest.approx(reference[17], abs=1e-5)
    order = np.argsort(-reference)[:5]
    assert [t for t, _ in top] == order.tolist()
    np.testing.assert_allclose([lp for _, lp in top], reference[order], atol=1e-5)
    assert sampler.logprobs(row, 17, 0)[1] == []


# ---------------------------------------------------------------- a grammar (a fake one here)


class AllowOnly:
    """A constraint allowing a fixed set of tokens; records how many candidates it was shown."""

    def __init__(self, allowed: np.ndarray) -> None:
        self.mask = allowed
        self.n_shown = 0
        self.accepted: list[int] = []
        self.closed = False

    def allowed(self, candidate_ids: np.ndarray, candidate_logits: np.ndarray) -> np.ndarray:
        self.n_shown += candidate_ids.size
        return self.mask[candidate_ids]

    def accept(self, token: int) -> None:
        assert self.mask[token]
        self.accepted.append(token)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("chain", ["default", "top_p_only", "typical_only", "mirostat2", "tfs_k"])
def test_grammar_restricts_before_truncation(chain: str) -> None:
    row = heavy_tail_row(6)
    rng = np.random.default_rng(0)
    allowed = rng.random(N_VOCAB) < 0.3
    grammar = AllowOnly(allowed)
    sampler = make_sampler(CHAINS[chain], grammar=grammar)
    want = reference_distribution(row, sampler.options, mu=sampler.mu, allowed=allowed)
    # The grammar is not asked about tokens whose mass is below 1e-4 of the allowed mass.
    assert_close_distribution(sampler.distribution(row), want, 2e-4)
    token = sampler.sample(row)
    assert allowed[token]
    sampler.accept(token)
    assert grammar.accepted == [token]
    sampler.close()
    assert grammar.closed


def test_grammar_that_allows_only_improbable_tokens_falls_back_to_the_whole_vocabulary() -> None:
    row = peaked_row(0)
    allowed = np.zeros(N_VOCAB, dtype=bool)
    lowest = np.argsort(row)[:3]
    allowed[lowest] = True
    for overrides in ({}, {"temperature": 0}, {"mirostat": 2}):
        sampler = make_sampler(overrides, grammar=AllowOnly(allowed))
        assert sampler.sample(row) in lowest.tolist()


def test_grammar_sees_few_candidates_on_a_peaked_row() -> None:
    row = peaked_row(1)
    grammar = AllowOnly(np.ones(N_VOCAB, dtype=bool))
    make_sampler({}, grammar=grammar).sample(row)
    assert grammar.n_shown < 1000


# ---------------------------------------------------------------- robustness (issue 9)


def test_observe_keeps_only_the_penalty_window_of_a_long_prompt() -> None:
    prompt = list(np.random.default_rng(3).integers(2, N_VOCAB, 20_000))
    row = heavy_tail_row(4)
    for overrides in ({"repeat_last_n": 64}, {"repeat_last_n": -1, "num_ctx": 4096}):
        options = {"seed": 1, "repeat_penalty": 1.5, "presence_penalty": 0.5, **overrides}
        sampler = make_sampler(options)
        sampler.observe(prompt)
        window = 64 if overrides["repeat_last_n"] == 64 else 4096
        assert len(sampler._history) == window
        want = reference_distribution(row, Options().updated(options), history=prompt)
        assert_same_distribution(sampler.distribution(row), want)


def test_the_window_of_repeat_last_n_minus_1_is_the_sequences_real_context() -> None:
    options = Options().updated({"repeat_last_n": -1, "num_ctx": 10**9})
    sampler = SequenceSampler(options, VocabInfo(n_vocab=N_VOCAB), n_ctx=512)
    sampler.observe(range(2, 5000))
    assert len(sampler._history) == 512


@pytest.mark.parametrize("chain", ["greedy", "default", "mirostat2", "typical", "grammar"])
def test_a_nan_row_raises_a_sampling_error(chain: str) -> None:
    overrides = {
        "greedy": {"temperature": 0.0},
        "default": {},
        "mirostat2": {"mirostat": 2},
        "typical": {"typical_p": 0.5},
        "grammar": {},
    }[chain]
    grammar = AllowOnly(np.ones(N_VOCAB, dtype=bool)) if chain == "grammar" else None
    sampler = make_sampler(overrides, grammar=grammar)
    row = peaked_row(1)
    row[123] = np.nan
    with pytest.raises(SamplingError, match="NaN"):
        sampler.sample(row)


def test_infinite_logits_are_clamped_not_propagated() -> None:
    row = peaked_row(2)
    row[77] = np.inf
    row[78] = -np.inf
    for overrides in ({"temperature": 0.0}, {}, {"mirostat": 2}, {"typical_p": 0.9}):
        sampler = make_sampler(overrides)
        assert sampler.sample(row) == 77
        ids, probs = sampler.distribution(row)
        assert np.isfinite(probs).all() and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-5)
    value, _ = make_sampler({}).logprobs(row, 77, 2)
    assert math.isfinite(value)


EXTREMES = [
    {"repeat_penalty": 1e-45},
    {"repeat_penalty": 0.0},
    {"repeat_penalty": 1e38},
    {"frequency_penalty": -1e308},
    {"frequency_penalty": 1e308},
    {"presence_penalty": -math.inf},
    {"presence_penalty": math.inf},
    {"temperature": 1e-45},
    {"temperature": 1e308},
    {"temperature": 1e-300, "mirostat": 1},
    {"mirostat": 2, "mirostat_tau": 1e308},
    {"mirostat": 1, "mirostat_eta": 1e308},
    {"typical_p": 0.0},
    {"top_p": 0.0},
    {"min_p": 1.0},
    {"tfs_z": 0.0},
    {"top_k": 2**62},
]


@pytest.mark.parametrize("extreme", EXTREMES, ids=[str(e) for e in EXTREMES])
@pytest.mark.parametrize("n_vocab", [N_VOCAB, 262_144])
def test_extreme_option_values_give_a_valid_distribution(extreme: dict, n_vocab: int) -> None:
    # built directly, past the option parser's ranges: the sampler must cope on its own
    options = attrs.evolve(Options(seed=5, repeat_last_n=16), **extreme)
    sampler = SequenceSampler(options, VocabInfo(n_vocab=n_vocab))
    row = heavy_tail_row(6, n_vocab)
    sampler.observe(np.argsort(-row)[:16].tolist())  # penalise the most likely tokens
    for _ in range(3):
        ids, probs = sampler.distribution(row)
        assert np.isfinite(probs).all() and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-4)
        token = sampler.sample(row)
        assert 0 <= token < n_vocab
        sampler.accept(token)


def test_draw_index_refuses_a_distribution_without_mass() -> None:
    with pytest.raises(SamplingError):
        truncation.draw_index(np.zeros(10), 0.5)
    with pytest.raises(SamplingError):
        truncation.draw_index(np.full(10, np.nan), 0.5)
