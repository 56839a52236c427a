"""The pure parts of speculative decoding: n-gram drafts, verification, rejection sampling's
law, the adaptive draft length, and the scheduler's draft budget. Hand-made logits, fixed seeds:
deterministic and fast."""

from __future__ import annotations

import math

import numpy as np
import pytest

from power.engine.sampling import SequenceSampler, VocabInfo
from power.engine.scheduler import Scheduler, SlotState
from power.engine.speculative import (
    DraftPolicy,
    NgramIndex,
    PromptLookup,
    best_draft_length,
    coupled_sample,
    matched_prefix,
    rejection_sample,
    verify,
)
from power.options import Options

# ---------------------------------------------------------------- n-gram lookup


def test_ngram_lookup_prefers_the_longest_match_and_its_latest_occurrence():
    index = NgramIndex([1, 2, 3, 4, 5, 9, 3, 4, 7, 8, 2, 3, 4])
    # (2, 3, 4) occurred once, followed by 5; (3, 4) occurred later, followed by 7
    assert index.propose(3) == [5, 9, 3]
    index.append(7)
    # (3, 4, 7) occurred: 8 2 3 4 7 followed
    assert index.propose(10) == [8, 2, 3, 4, 7]
    assert index.propose(0) == []


def test_ngram_lookup_falls_back_to_bigrams_and_proposes_nothing_without_a_match():
    index = NgramIndex([10, 11, 12, 13, 50, 11])
    assert index.propose(2) == []  # (50, 11) never occurred, (11,) is too short
    index.append(12)
    assert index.propose(2) == [13, 50]  # the bigram (11, 12)
    assert NgramIndex([5]).propose(4) == []
    assert NgramIndex([]).propose(4) == []


def test_a_proposal_never_reaches_past_the_known_tokens():
    index = NgramIndex([7, 7, 7, 7])
    assert index.propose(8) == [7]  # (7, 7, 7) last seen at 0..2, followed by one 7


def test_prompt_lookup_indexes_generated_tokens_as_they_come():
    lookup = PromptLookup(DraftPolicy(max_draft=4, prior=0.99))
    prompt = [1, 20, 21, 22, 23, 24, 25]
    assert lookup.propose(prompt, [20, 21], limit=8) == [22, 23, 24, 25]
    assert lookup.propose(prompt, [20, 21, 22, 23], limit=1) == [24]
    assert lookup.propose(prompt, [20, 21, 22, 23], limit=0) == []


def test_while_not_drafting_the_lookup_still_guesses_and_the_estimate_follows_the_text():
    policy = DraftPolicy(max_draft=8, prior=0.6, retry_after=1000)
    lookup = PromptLookup(policy)
    prompt = list(range(100, 140))  # the output will copy this
    for _ in range(8):
        policy.record(4, 0)  # drafts kept failing: the policy drafts nothing
    assert policy.best_k(0.3) == 0
    generated = [100, 101]
    steps_until_drafting = 0
    while not lookup.propose(prompt, generated, limit=8, cost=0.3):
        generated.append(generated[-1] + 1)  # the copy goes on, one plain token a step
        steps_until_drafting += 1
    assert steps_until_drafting < 15  # long before the probe (retry_after) would have come
    assert policy.n_drafted == 32 and policy.n_accepted == 0  # guesses are not counted
    # a wrong guess lowers the estimate as a rejected draft does
    before = policy.acceptance
    expensive = 100.0  # no draft pays: the lookup only guesses
    generated.append(generated[-1] + 1)
    assert lookup.propose(prompt, generated, limit=8, cost=expensive) == []  # guesses the next
    assert lookup.propose(prompt, [*generated, 999], limit=8, cost=expensive) == []
    assert policy.acceptance < before


# ---------------------------------------------------------------- verification


def rows_sampler(tokens):
    calls = []

    def sample_row(i):
        calls.append(i)
        return tokens[i]

    return sample_row, calls


def test_verify_accepts_the_matching_prefix_and_emits_the_correction():
    sample_row, calls = rows_sampler([5, 6, 9, 8])
    assert verify(sample_row, [5, 6, 7]) == [5, 6, 9]
    assert calls == [0, 1, 2]  # the row after a rejection is never sampled
    assert matched_prefix([5, 6, 9], [5, 6, 7]) == 2


def test_verify_emits_a_bonus_token_after_a_fully_accepted_draft():
    sample_row, calls = rows_sampler([5, 6, 7, 8])
    assert verify(sample_row, [5, 6, 7]) == [5, 6, 7, 8]
    sample_row, calls = rows_sampler([4])
    assert verify(sample_row, []) == [4]


def test_verify_stops_at_an_end_or_at_num_predict():
    sample_row, calls = rows_sampler([5, 0, 7, 8])
    assert verify(sample_row, [5, 0, 7], lambda t, n: t == 0) == [5, 0]
    sample_row, calls = rows_sampler([5, 6, 7, 8])
    assert verify(sample_row, [5, 6, 7], lambda t, n: n >= 2) == [5, 6]


# ---------------------------------------------------------------- the sampled law

VOCAB = VocabInfo(n_vocab=12, newline_ids=[10], eog_ids=[0])
ROW0 = np.array([0.1, 2.0, 1.5, 1.4, 0.3, 1.0, -1.0, 0.2, 1.1, 0.9, -2.0, 0.5], np.float32)
ROW1 = np.array([0.0, 0.5, 1.9, 0.1, 1.2, 0.3, 1.6, -0.4, 0.8, 1.0, 0.2, 1.3], np.float32)
SAMPLED = dict(temperature=0.9, top_k=8, top_p=0.97, min_p=0.02, seed=0)


def chi_square(counts: dict[int, int], ids: np.ndarray, probs: np.ndarray, n: int) -> float:
    expected = dict(zip(ids.tolist(), (probs * n).tolist(), strict=True))
    assert set(counts) <= set(expected), "a token outside the distribution was drawn"
    return sum((counts.get(t, 0) - e) ** 2 / e for t, e in expected.items() if e > 0)


#: chi-square critical values at p = 0.001 for 1..11 degrees of freedom
CHI2_999 = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        dict(repeat_penalty=1.6, frequency_penalty=0.4, presence_penalty=0.3),
        dict(typical_p=0.9, top_k=0),
        dict(mirostat=2, mirostat_tau=3.0, mirostat_eta=0.2),
    ],
)
def test_speculative_sampling_leaves_the_distribution_unchanged(extra):
    """Many seeded draws of a two-row step with draft tokens [2, 4]: the first emitted token
    follows the plain first-row law; given it accepted the draft, the second follows the
    second row's law under the sampler state that saw the accepted token (penalties, mu)."""
    options = Options(**{**SAMPLED, **extra})
    history = [1, 2, 2, 3, 4]
    n = 6000
    first: dict[int, int] = {}
    second: dict[int, int] = {}
    n_accepted = 0
    rows = [ROW0, ROW1]
    for seed in range(n):
        sampler = SequenceSampler(options.updated({"seed": seed}), VOCAB)
        sampler.observe(history)
        emitted = []

        def sample_row(i, sampler=sampler, emitted=emitted):
            token = sampler.sample(rows[i])
            sampler.accept(token)
            emitted.append(token)
            return token

        verify(sample_row, [2], lambda t, k: False)
        first[emitted[0]] = first.get(emitted[0], 0) + 1
        if emitted[0] == 2:
            n_accepted += 1
            second[emitted[1]] = second.get(emitted[1], 0) + 1
    reference = SequenceSampler(options, VOCAB)
    reference.observe(history)
    ids0, probs0 = reference.distribution(ROW0)
    statistic = chi_square(first, ids0, probs0, n)
    assert statistic < CHI2_999[len(ids0) - 2], (statistic, first)
    reference.accept(2)  # what the sampler knows once the draft token 2 was accepted
    ids1, probs1 = reference.distribution(ROW1)
    statistic = chi_square(second, ids1, probs1, n_accepted)
    assert statistic < CHI2_999[len(ids1) - 2], (statistic, second)


def test_textbook_rejection_sampling_and_the_coupled_draw_have_the_same_law():
    ids = np.array([3, 5, 7, 9, 11])
    probs = np.array([0.1, 0.4, 0.2, 0.25, 0.05])
    rng = np.random.default_rng(20261202)
    n = 20000
    for draft in (5, 11, 4):  # likely, unlikely, impossible
        textbook: dict[int, int] = {}
        coupled: dict[int, int] = {}
        for _ in range(n):
            token, accepted = rejection_sample(ids, probs, draft, rng)
            assert accepted == (token == draft)
            textbook[token] = textbook.get(token, 0) + 1
            token, accepted = coupled_sample(ids, probs, draft, float(rng.random()))
            assert accepted == (token == draft)
            coupled[token] = coupled.get(token, 0) + 1
        assert chi_square(textbook, ids, probs, n) < CHI2_999[3]
        assert chi_square(coupled, ids, probs, n) < CHI2_999[3]


def test_with_a_seed_speculation_draws_the_same_tokens_as_plain_decoding():
    options = Options(**SAMPLED, repeat_penalty=1.3)
    rows = [ROW0, ROW1, ROW0[::-1].copy(), ROW1[::-1].copy()]
    for seed in range(200):
        plain = SequenceSampler(options.updated({"seed": seed}), VOCAB)
        expected = []
        for row in rows:
            expected.append(plain.sample(row))
            plain.accept(expected[-1])
        speculative = SequenceSampler(options.updated({"seed": seed}), VOCAB)

        def sample_row(i, s=speculative):
            token = s.sample(rows[i])
            s.accept(token)
            return token

        # the draft is right as far as plain decoding goes, then wrong
        draft = expected[:2] + [(expected[2] + 1) % 12]
        assert verify(sample_row, draft) == expected[:3]


# ---------------------------------------------------------------- adaptive draft length


def test_best_draft_length_grows_with_acceptance_and_is_zero_when_drafts_fail():
    lengths = [best_draft_length(a, 8, 0.2) for a in (0.0, 0.1, 0.3, 0.6, 0.8, 0.9, 0.99)]
    assert lengths[0] == lengths[1] == 0
    assert lengths == sorted(lengths) and lengths[-1] == 8
    assert best_draft_length(0.99, 3, 0.2) == 3
    assert best_draft_length(0.99, 0, 0.2) == 0
    assert best_draft_length(0.7, 8, 2.0) == 0  # drafts that cost more than they bring


def test_the_policy_ramps_up_on_success_and_backs_off_on_failure_then_probes():
    policy = DraftPolicy(max_draft=8, cost=0.2, prior=0.6, retry_after=5)
    k0 = policy.next_k()
    assert 0 < k0 < 8
    for _ in range(10):
        k = policy.next_k()
        policy.record(k, k)
    assert policy.next_k() == 8
    for _ in range(12):
        policy.record(8, 0)
    assert policy.best_k() == 0
    probes = [policy.next_k() for _ in range(15)]
    assert probes == [0, 0, 0, 0, 1] * 3  # one-token probes every retry_after steps
    policy.record(1, 1)  # a probe that succeeds raises the estimate, but one is not enough
    assert policy.n_drafted > policy.n_accepted > 0


def test_a_policy_with_no_room_never_probes():
    policy = DraftPolicy(max_draft=0, retry_after=1)
    assert [policy.next_k() for _ in range(5)] == [0] * 5


def test_rejections_after_the_first_say_nothing_about_acceptance():
    a, b = DraftPolicy(), DraftPolicy()
    a.record(3, 1)
    b.record(8, 1)
    assert math.isclose(a.acceptance, b.acceptance)


# ---------------------------------------------------------------- the scheduler's budget


def generating(scheduler: Scheduler, n_past: int = 4) -> None:
    for slot in scheduler.slots:
        slot.state = SlotState.GENERATING
        slot.cached = list(range(n_past))
        slot.next_token = 7


def test_drafts_use_only_the_room_left_after_one_token_each_and_the_prompts():
    scheduler = Scheduler(4, 64, 12)
    generating(scheduler)
    prompting = scheduler.slots[3]
    prompting.state, prompting.pending, prompting.next_token = SlotState.PROMPT, [5] * 6, None
    plan = scheduler.plan({0: [1, 2, 3, 4, 5], 1: [1, 2, 3, 4, 5], 2: [9]})
    by_seq = {e.slot.seq_id: e for e in plan.entries}
    assert len(by_seq[3].tokens) == 6  # the prompt got what it needed first
    assert plan.n_tokens == 12
    assert [by_seq[s].n_draft for s in (0, 1, 2)] == [1, 1, 1]  # 3 left, one each in turn
    assert by_seq[0].tokens == [7, 1] and by_seq[0].wants_logits


def test_drafts_are_shared_in_turn_and_clipped_to_the_context():
    scheduler = Scheduler(3, 64, 20)
    generating(scheduler)
    scheduler.slots[2].cached = list(range(62))  # one cell left after its next token
    plan = scheduler.plan({0: [1] * 10, 1: [1] * 10, 2: [1] * 10})
    n_draft = {e.slot.seq_id: e.n_draft for e in plan.entries}
    assert n_draft[2] == 1 and n_draft[0] + n_draft[1] == 20 - 3 - 1
    assert abs(n_draft[0] - n_draft[1]) <= 1


def test_commit_keeps_the_accepted_drafts_and_reports_the_rejected_cells():
    scheduler = Scheduler(2, 64, 16)
    generating(scheduler)
    plan = scheduler.plan({0: [8, 9, 10], 1: [20, 21]})
    rejected = scheduler.commit(plan, {0: 11, 1: 30}, {0: 3, 1: 0})
    assert scheduler.slots[0].cached == [0, 1, 2, 3, 7, 8, 9, 10]
    assert scheduler.slots[1].cached == [0, 1, 2, 3, 7]
    assert [(slot.seq_id, position) for slot, position in rejected] == [(1, 5)]
    assert scheduler.slots[0].next_token == 11 and scheduler.slots[1].next_token == 30


def test_a_draft_token_costs_more_among_many_sequences():
    from power.engine.speculative import step_draft_cost

    alone, among_8 = step_draft_cost(1, 0.5), step_draft_cost(8, 0.5)
    assert math.isclose(alone, 1 / 3) and math.isclose(among_8, 0.8)
    assert best_draft_length(0.98, 8, alone) == 8 and best_draft_length(0.98, 8, among_8) == 4
    assert best_draft_length(0.6, 8, among_8) == 0


def test_step_costs_follow_the_prior_until_measured_then_a_line_past_one_token():
    from power.engine.speculative import StepCosts

    costs = StepCosts(prior=0.3)
    assert math.isclose(costs.seconds(1), 1.0) and math.isclose(costs.seconds(11), 4.0)
    costs.observe(1, 0.020)
    assert math.isclose(costs.seconds(11), 0.080)  # the prior's shape from the one measured
    costs.observe(2, 0.048)  # the second token costs as much as the first (a CPU)
    assert math.isclose(costs.seconds(1), 0.020) and math.isclose(costs.seconds(2), 0.048)
    assert math.isclose(costs.seconds(12), 0.048 * (1 + 0.3 * 11) / 1.3)
    for _ in range(4):
        for n in range(2, 17, 2):
            costs.observe(n, 0.040 + 0.006 * n)  # then 6 ms a token
    assert math.isclose(costs.seconds(1), 0.020)
    assert math.isclose(costs.seconds(30), 0.040 + 0.006 * 30, rel_tol=0.02)
    costs.observe(11, 0.5)  # one wild step moves the line, not just its own size
    assert costs.seconds(11) < 0.2 and costs.seconds(9) > 0.040 + 0.006 * 9


def test_step_cost_estimates_never_fall_as_the_batch_grows():
    from power.engine.speculative import StepCosts

    noisy = StepCosts()
    noisy.observe(1, 0.030)
    noisy.observe(3, 0.020)  # a fast moment: must not make drafts look cheaper than none
    noisy.observe(5, 0.010)
    assert min(noisy.seconds(n) for n in range(2, 9)) >= noisy.seconds(1)
    noisy.observe(0, 1.0)
    noisy.observe(5, float("nan"))
    assert sorted(noisy._seconds) == [1, 3, 5]


def test_drafts_are_long_where_batches_are_cheap_and_short_where_they_are_not():
    from power.engine.speculative import StepCosts

    gpu, cpu = StepCosts(), StepCosts()
    for n in range(1, 18):
        gpu.observe(n, 0.010 + 0.0001 * n)  # sixteen tokens cost about as much as one
    for n, seconds in {1: 0.023, 2: 0.048, 4: 0.061, 8: 0.098, 16: 0.145}.items():
        cpu.observe(n, seconds)
    assert best_draft_length(0.95, 16, gpu.draft_costs(1, 1)) == 16
    alone = cpu.draft_costs(1, 1)
    assert alone(1) > 2.0  # one draft doubles the step here
    assert best_draft_length(0.8, 16, alone) == 4
    assert best_draft_length(0.97, 16, alone) == 16
    # among eight sequences a draft token's cost is set against an eighth of the step
    for n in range(8, 25):
        cpu.observe(n, 0.060 + 0.006 * n)
    among_8, alone = cpu.draft_costs(8, 8), cpu.draft_costs(1, 1)
    for a in (0.9, 0.95, 0.99):
        assert best_draft_length(a, 16, among_8) < best_draft_length(a, 16, alone)
    assert best_draft_length(0.5, 16, among_8) == 0


def test_a_fixed_token_cost_is_the_linear_model():
    from power.engine.speculative import LinearCosts, step_draft_cost

    cost = LinearCosts(0.5).draft_costs(8, 8)
    assert math.isclose(cost(3), 1 + 3 * step_draft_cost(8, 0.5))


def test_the_option_and_the_setting(monkeypatch):
    from power.config import Settings
    from power.options import OptionError

    assert Options().draft_num_predict == 32
    assert Options().updated({"draft_num_predict": "4"}).draft_num_predict == 4
    with pytest.raises(OptionError, match="draft_num_predict"):
        Options().updated({"draft_num_predict": 65})
    monkeypatch.delenv("POWER_SPECULATIVE", raising=False)
    assert Settings.from_env().speculative
    monkeypatch.setenv("POWER_SPECULATIVE", "0")
    assert not Settings.from_env().speculative
