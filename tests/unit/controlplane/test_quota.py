"""One user's blob uploads through one node are bounded per window, with a clear answer."""

from __future__ import annotations

from unibus.controlplane.quota import UploadBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_uploads_are_admitted_until_the_budget_is_spent_then_refused_with_when_to_retry() -> None:
    clock = Clock()
    budget = UploadBudget(100, window=60.0, clock=clock)
    assert budget.refusal("alice", 60) is None
    budget.charge("alice", 60)
    refusal = budget.refusal("alice", 60)
    assert refusal is not None
    assert "40 left" in refusal
    assert "try again in 60 s" in refusal
    assert budget.refusal("alice", 40) is None
    budget.charge("alice", 40)
    assert budget.refusal("alice", None) is not None  # nothing left, size unknown


def test_each_user_has_its_own_budget_and_a_new_window_a_fresh_one() -> None:
    clock = Clock()
    budget = UploadBudget(100, window=60.0, clock=clock)
    budget.charge("alice", 100)
    assert budget.refusal("bob", 100) is None
    clock.now += 60.0
    assert budget.refusal("alice", 100) is None


def test_an_upload_of_unknown_size_is_admitted_while_anything_is_left() -> None:
    budget = UploadBudget(100, clock=Clock())
    budget.charge("alice", 99)
    assert budget.refusal("alice", None) is None
