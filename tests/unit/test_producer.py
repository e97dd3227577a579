"""The producer's claim policy, the reconnect pauses and the completer's batches: no database."""

from __future__ import annotations

from taskq.backoff import Backoff
from worker.completer import Outcomes, statements
from worker.producer import ClaimPolicy

FAST, SLOW = 0.001, 1.0  # seconds, against fast_task_ms=5


def policy(**changes: int) -> ClaimPolicy:
    return ClaimPolicy(**{"batch_size": 8, "fast_task_ms": 5.0, **changes})


def claim_size(p: ClaimPolicy) -> int:
    return p.next_limit(done=0, ahead=0, stopping=False)


def test_one_at_a_time_until_tasks_prove_fast_then_doubling_up_to_the_batch() -> None:
    p = policy()
    sizes = [claim_size(p)]
    for _ in range(5):  # each batch's last task finishes fast: the next claim doubles
        assert p.finished(FAST, queued=0) is False
        sizes.append(claim_size(p))
    assert sizes == [1, 2, 4, 8, 8, 8]


def test_the_claim_grows_once_per_batch_not_per_task() -> None:
    p = policy()
    p.finished(FAST, queued=0)
    for queued in (3, 2, 1):  # tasks that finish while others of their batch still wait
        p.finished(FAST, queued=queued)
    assert claim_size(p) == 2
    p.finished(FAST, queued=0)
    assert claim_size(p) == 4


def test_one_slow_task_claims_one_again_and_a_second_hands_the_prefetch_back() -> None:
    p = policy()
    for _ in range(3):
        p.finished(FAST, queued=0)
    assert claim_size(p) == 8
    assert p.finished(SLOW, queued=5) is False  # a lone slow task: maybe just preempted
    assert claim_size(p) == 1
    assert p.finished(SLOW, queued=4) is True  # two in a row: give the prefetched batch back
    assert p.finished(FAST, queued=3) is False and p.slow_streak == 0
    assert p.finished(SLOW, queued=2) is False  # the streak starts over


def test_prefetch_only_while_fast_with_a_backlog_and_not_stopping() -> None:
    p = policy()
    p.claimed(got=1, asked=1)
    assert not p.prefetching(stopping=False)  # claims of one: tasks are not known to be fast
    p.finished(FAST, queued=0)
    assert p.prefetching(stopping=False)
    assert not p.prefetching(stopping=True)
    p.claimed(got=1, asked=2)  # a trickle: the claim came back short
    assert not p.prefetching(stopping=False)
    p.claimed(got=0, asked=0)  # an exchange that only wrote outcomes says nothing
    assert not p.prefetching(stopping=False)
    p.claimed(got=2, asked=2)
    assert p.prefetching(stopping=False)


def test_free_slots_with_max_tasks_count_what_is_claimed_ahead() -> None:
    p = policy(max_tasks=10)
    for _ in range(3):
        p.finished(FAST, queued=0)
    assert p.next_limit(done=0, ahead=0, stopping=False) == 8
    assert p.next_limit(done=0, ahead=8, stopping=False) == 2  # 8 queued or in flight
    assert p.next_limit(done=6, ahead=4, stopping=False) == 0
    assert p.next_limit(done=9, ahead=0, stopping=False) == 1
    assert not p.spent(9) and p.spent(10)
    assert not policy().spent(10_000)  # no max_tasks: never spent


def test_stopping_claims_nothing() -> None:
    assert policy().next_limit(done=0, ahead=0, stopping=True) == 0
    assert policy(max_tasks=5).next_limit(done=0, ahead=0, stopping=True) == 0


def test_backoff_doubles_to_its_cap_and_starts_over_after_a_success() -> None:
    backoff = Backoff(0.05, 0.3)
    assert [backoff.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next() == 0.05


def test_a_batch_is_one_statement_per_kind_in_a_fixed_order() -> None:
    batch = Outcomes()
    assert statements(batch, 60) == []
    batch.release(5, 50)
    batch.fail(3, 30, "boom", ("echo", "default"))
    batch.complete(1, 10, '{"n": 1}')
    batch.complete(2, 20, None)
    assert statements(batch, 60) == [
        ("complete_tasks", {"ids": [1, 2], "tokens": [10, 20], "results": ['{"n": 1}', None]}),
        ("fail_tasks", {"ids": [3], "tokens": [30], "errors": ["boom"], "max_delay": 60}),
        ("release_tasks", {"ids": [5], "tokens": [50]}),
    ]
    assert len(batch) == 4 and batch.task_ids() == {1, 2, 3, 5}


def test_a_batch_that_did_not_go_through_is_taken_back_whole() -> None:
    pending, lost = Outcomes(), Outcomes()
    pending.complete(7, 70, None)
    lost.complete(1, 10, '"a"')
    lost.fail(2, 20, "e", ("t", "q"))
    lost.release(3, 30)
    pending.merge(lost)
    assert pending.done_ids == [7, 1] and pending.done_results == [None, '"a"']
    assert pending.failed_labels == [("t", "q")] and pending.released_tokens == [30]
