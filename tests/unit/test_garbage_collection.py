"""The garbage-collector settings that a serving process runs with."""

from __future__ import annotations

import gc

from app.core.garbage_collection import YOUNG_GENERATION_THRESHOLD, serving_garbage_collector


def test_serving_freezes_startup_objects():
    built_at_startup = [{"example": index} for index in range(1000)]

    with serving_garbage_collector():
        frozen = gc.get_freeze_count()
        threshold = gc.get_threshold()

    assert frozen >= len(built_at_startup)
    assert threshold[0] == YOUNG_GENERATION_THRESHOLD


def test_serving_restores_collector_after():
    before = gc.get_threshold()

    with serving_garbage_collector():
        pass

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_serving_restores_collector_after_error():
    before = gc.get_threshold()

    try:
        with serving_garbage_collector():
            raise RuntimeError("start-up failed")
    except RuntimeError:
        pass

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
