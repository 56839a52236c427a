"""The pure slot scheduler, driven with hand-made decode results (no llama.cpp)."""

from __future__ import annotations

import attrs

from power.engine.scheduler import Scheduler, SlotState, common_prefix


@attrs.define(eq=False)
class Req:
    prompt: list[int]


def run_step(sched: Scheduler, next_token: int = 7) -> list:
    sched.admit()
    plan = sched.plan()
    sampled = {e.slot.seq_id: next_token for e in plan.entries if e.wants_logits}
    sched.commit(plan, sampled)
    return plan.entries


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_requests_beyond_slots_wait_in_order():
    sched = Scheduler(n_slots=2, n_ctx_seq=100, n_batch=64)
    reqs = [Req([1, 2, 3]) for _ in range(4)]
    for r in reqs:
        sched.submit(r)
    admitted = sched.admit()
    assert [a.request for a in admitted] == reqs[:2]
    assert list(sched.waiting) == reqs[2:]
    sched.release(admitted[0].slot)
    assert [a.request for a in sched.admit()] == [reqs[2]]


def test_plan_gives_generating_slots_one_token_then_prompt_chunks():
    sched = Scheduler(n_slots=3, n_ctx_seq=1000, n_batch=16)
    sched.submit(Req(list(range(5))))
    run_step(sched)  # first request's prompt fits: it is generating now
    assert sched.slots[0].state is SlotState.GENERATING
    sched.submit(Req(list(range(100, 140))))
    sched.submit(Req(list(range(200, 240))))
    sched.admit()
    plan = sched.plan()
    assert plan.entries[0].tokens == [7] and plan.entries[0].wants_logits
    assert plan.n_tokens == 16
    prompt_entries = plan.entries[1:]
    assert len(prompt_entries) == 2  # both prompts progress in the same step
    assert all(not e.wants_logits for e in prompt_entries)


def test_positions_follow_cached_tokens():
    sched = Scheduler(n_slots=1, n_ctx_seq=1000, n_batch=4)
    sched.submit(Req(list(range(10))))
    starts = []
    for _ in range(4):
        entries = run_step(sched)
        starts.append(entries[0].start_pos)
    assert starts == [0, 4, 8, 10]
    assert sched.slots[0].cached[:10] == list(range(10))


def test_prompt_cache_reuses_the_longest_prefix():
    sched = Scheduler(n_slots=2, n_ctx_seq=1000, n_batch=64)
    sched.submit(Req([1, 2, 3, 4]))
    sched.submit(Req([9, 9, 9]))
    run_step(sched)
    for slot in sched.slots:
        sched.release(slot)
    (admission,) = (sched.submit(Req([1, 2, 3, 4, 5, 6])), sched.admit())[1]
    assert admission.slot.seq_id == 0
    assert admission.n_reuse == 4
    assert admission.slot.pending == [5, 6]


def test_identical_prompt_keeps_one_token_to_evaluate():
    sched = Scheduler(n_slots=1, n_ctx_seq=1000, n_batch=64)
    sched.submit(Req([1, 2, 3]))
    run_step(sched)
    sched.release(sched.slots[0])
    sched.submit(Req([1, 2, 3]))
    (admission,) = sched.admit()
    assert admission.n_reuse == 2
    assert admission.slot.pending == [3]


def test_shift_or_full_when_the_window_is_exhausted():
    sched = Scheduler(n_slots=2, n_ctx_seq=8, n_batch=64)
    sched.submit(Req(list(range(8))))
    sched.submit(Req(list(range(8))))
    run_step(sched)
    allowed = {0: True, 1: False}
    shifts, full = sched.shifts_needed(lambda slot: (allowed[slot.seq_id], 2))
    assert [s.slot.seq_id for s in shifts] == [0]
    assert shifts[0].n_keep == 2 and shifts[0].n_discard == 3
    assert sched.slots[0].n_past == 5
    assert [s.seq_id for s in full] == [1]


def test_withdraw_removes_waiting_request():
    sched = Scheduler(n_slots=1, n_ctx_seq=10, n_batch=4)
    r1, r2 = Req([1]), Req([2])
    sched.submit(r1)
    sched.submit(r2)
    assert sched.withdraw(r2)
    assert not sched.withdraw(r2)
    assert list(sched.waiting) == [r1]


def test_a_prefix_held_by_a_busy_sequence_is_shared_by_copy():
    sched = Scheduler(n_slots=2, n_ctx_seq=1000, n_batch=64, min_shared_prefix=4)
    system = list(range(100, 130))
    sched.submit(Req(system + [1, 2, 3]))
    run_step(sched)  # slot 0 holds the system prompt and is generating
    sched.submit(Req(system + [7, 8]))
    (admission,) = sched.admit()
    assert admission.slot.seq_id == 1
    assert admission.copy_from == 0
    assert admission.n_reuse == len(system)
    assert admission.slot.cached == system and admission.slot.pending == [7, 8]


def test_short_shared_prefixes_are_not_copied():
    sched = Scheduler(n_slots=2, n_ctx_seq=1000, n_batch=64, min_shared_prefix=16)
    sched.submit(Req([1, 2, 3, 4, 5]))
    run_step(sched)
    sched.submit(Req([1, 2, 3, 9]))
    (admission,) = sched.admit()
    assert admission.copy_from is None and admission.n_reuse == 0
