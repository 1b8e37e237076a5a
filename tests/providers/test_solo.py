"""The solo lane: a lone decoding sequence runs on the shipped weights, and moves back to the
batch as soon as another request comes."""

from __future__ import annotations

from sluicegate.providers.local import LocalProvider
from tests.conftest import wait_until
from tests.providers.test_engine import sequence, sink


def test_a_lone_sequence_moves_out_and_back_and_finishes_whole(local: LocalProvider) -> None:
    engine = local.engine
    assert engine.solo is not None  # the served configuration has one
    moves = engine.stats.solo_moves
    a = sequence(local, "Write a long story about a lighthouse keeper.", 160, temperature=0.8)
    engine.submit(a)
    assert wait_until(lambda: engine.solo is not None and engine.solo.seq is a and a.decoded > 5)
    b = sequence(local, "Name three rivers.", 24, temperature=0.8)
    moves_before_b = engine.stats.solo_moves
    engine.submit(b)
    assert wait_until(lambda: b.decoded > 0)
    assert engine.stats.solo_moves > moves_before_b  # a went back to the batch when b came
    assert sink(b).done.wait(60) and sink(a).done.wait(60)
    assert engine.stats.solo_moves - moves >= 3  # out, back, out again once b ended (or more)
    assert sink(a).finish in ("end_turn", "max_tokens") and a.decoded <= 160
    assert sink(a).finish == "end_turn" or a.decoded == 160
    assert len("".join(sink(a).texts)) > 20
    assert wait_until(lambda: engine.active() == (0, 0))
    assert engine.kv_cells_used() == 0


def test_a_stop_in_the_solo_lane_stops_within_a_step(local: LocalProvider) -> None:
    engine = local.engine
    a = sequence(local, "Write a very long essay about rivers.", 300, temperature=0.8)
    engine.submit(a)
    assert wait_until(lambda: engine.solo is not None and engine.solo.seq is a and a.decoded > 5)
    at_cancel = a.decoded
    engine.cancel(a)
    assert wait_until(lambda: engine.active() == (0, 0))
    assert a.decoded - at_cancel <= 1
    assert engine.solo.seq is None and engine.kv_cells_used() == 0
