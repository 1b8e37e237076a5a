"""EventLog: the events as a list holds them, text deltas out of the collector's sight."""

from __future__ import annotations

import gc

from hypothesis import given
from hypothesis import strategies as st

from sluicegate.events import (
    BlockStart,
    BlockStop,
    Event,
    EventLog,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
    ToolInputDelta,
)

EVENTS = st.one_of(
    st.builds(TextDelta, st.text(max_size=5), st.integers(0, 2)),
    st.builds(ToolInputDelta, st.text(max_size=5), st.integers(0, 2)),
    st.builds(BlockStart, st.integers(0, 2)),
    st.builds(BlockStop, st.integers(0, 2)),
    st.just(MessageStart("msg", "m", 3)),
    st.just(MessageDelta("end_turn")),
    st.just(MessageStop()),
)


@given(st.lists(EVENTS, max_size=30), st.integers(-35, 35), st.integers(-35, 35))
def test_a_log_reads_back_as_the_list_of_its_events(events: list[Event], a: int, b: int) -> None:
    log = EventLog()
    for event in events:
        log.append(event)
    assert len(log) == len(events)
    assert list(log) == events and log == events and log == EventLog(events)
    assert [type(e) for e in log] == [type(e) for e in events]
    assert log[a:b] == events[a:b]
    for i in range(-len(events), len(events)):
        assert log[i] == events[i] and type(log[i]) is type(events[i])
    text = [e.text for e in events if isinstance(e, TextDelta)]
    tool = [e.partial_json for e in events if isinstance(e, ToolInputDelta)]
    assert log.chars == len("".join(text)) + len("".join(tool))


def test_a_long_answer_adds_nothing_the_collector_tracks() -> None:
    texts = [f"word{i} " for i in range(20_000)]  # made first: their strs are not tracked
    gc.collect()
    before = len(gc.get_objects())
    log = EventLog()
    for text in texts:
        log.append(TextDelta(text))
    log.append(TextDelta("other block", 1))  # kept as the event itself
    gc.collect()
    # (As TextDelta objects they would be 20,000; the margin is for other threads' objects.)
    assert len(gc.get_objects()) - before < 1_000
    assert "".join(e.text for e in log if isinstance(e, TextDelta) and e.index == 0) == "".join(
        texts
    )
    assert log[-1] == TextDelta("other block", 1)


def test_a_log_is_not_equal_to_what_holds_other_events() -> None:
    log = EventLog([TextDelta("a"), MessageStop()])
    assert log != [TextDelta("b"), MessageStop()]
    assert log != EventLog([TextDelta("a")])
    assert log != "a"
