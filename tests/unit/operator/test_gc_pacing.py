"""gc_pacing: survivors are frozen (never walked again) and a full step unfreezes first."""

from __future__ import annotations

import gc

from ebbtide_operator.gc_pacing import collect_and_freeze


def test_survivors_are_frozen_and_a_full_step_starts_from_an_unfrozen_heap():
    try:
        kept = [{"n": i} for i in range(1000)]
        collect_and_freeze(full=True)
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        cycle: list = []
        cycle.append(cycle)  # garbage once dropped: a young step collects it
        del cycle
        assert collect_and_freeze(full=False) >= 0.0
        assert gc.get_freeze_count() >= frozen
        del kept
        collect_and_freeze(full=True)  # unfrozen, collected, frozen again: the list is gone
        assert gc.get_freeze_count() < frozen + 1000
    finally:
        gc.unfreeze()
