"""The thread-width controller (llamacpp.Threads), on a fake clock: it goes down to one thread
when full-width steps stall (another process on the cores), probes full width with backoff,
and goes back up as soon as full width wins again; on an idle machine it stays at full width."""

from __future__ import annotations

import itertools

from sluicegate.providers.llamacpp import Threads


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def step(t: Threads, clock: Clock, seconds_by_width: dict[int, float], rows: int = 1) -> int:
    width = t.choose()
    t.record(width, False, rows, seconds_by_width[width])
    clock.now += seconds_by_width[width]
    return width


def test_an_idle_machine_stays_at_full_width_through_noise() -> None:
    clock = Clock()
    t = Threads(2, clock, others=lambda: None)
    widths = [step(t, clock, {2: 0.010 if i % 7 else 0.025, 1: 0.017}) for i in range(2000)]
    assert set(widths) == {2} and t.switches == 0  # a slow step now and then is not contention


def test_a_stall_goes_down_to_one_thread_at_once_and_probes_with_backoff() -> None:
    """Where nothing says what other processes use, full width is tried, ever more rarely."""
    clock = Clock()
    t = Threads(2, clock, others=lambda: None)
    for _ in range(50):
        step(t, clock, {2: 0.010, 1: 0.017})
    assert step(t, clock, {2: 0.5, 1: 0.017}) == 2  # the stall itself
    shared = {2: 0.5, 1: 0.02}
    widths = [step(t, clock, shared) for _ in range(3000)]  # a minute of shared cores
    probes = [i for i, w in enumerate(widths) if w == 2]
    assert widths[0] == 1 and 2 <= len(probes) <= 8  # a few probes, ever rarer
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps == sorted(gaps)
    # The other process ends: the next probe wins and full width is back.
    back = [step(t, clock, {2: 0.010, 1: 0.017}) for _ in range(4000)]
    first = back.index(2)
    assert all(w == 2 for w in back[first:])


def test_where_other_processes_load_is_known_it_decides_without_stalled_probes() -> None:
    clock = Clock()
    load = [0.2]  # a client's share of the cores
    t = Threads(2, clock, others=lambda: load[0])
    assert {step(t, clock, {2: 0.010, 1: 0.017}) for _ in range(500)} == {2}
    load[0] = 1.0  # a busy neighbour arrives
    shared = [step(t, clock, {2: 0.5, 1: 0.02}) for _ in range(3000)]
    assert shared.count(2) <= 1 and set(shared[1:]) == {1}  # down at the next look
    load[0] = 0.1  # it has gone
    back = [step(t, clock, {2: 0.010, 1: 0.017}) for _ in range(200)]
    assert back[-1] == 2 and back.index(2) < 100  # up again within a look (0.5 s)


def test_one_thread_given_never_changes() -> None:
    clock = Clock()
    t = Threads(1, clock, others=lambda: None)
    assert {step(t, clock, {1: s}) for s in (0.01, 1.0, 0.01)} == {1}


def test_bigger_batches_being_slower_is_not_contention() -> None:
    """Where each row costs (AVX2 here: one row 25 ms, eight rows 77 ms), batches of many
    sizes come and go at full width; a batch that becomes several times slower does not."""
    clock = Clock()
    t = Threads(2, clock, others=lambda: None)  # the timing alone decides
    sizes = [1, 8, 3, 8, 8, 2, 8, 64, 8, 1, 5, 8, 120, 8, 16, 8]
    for rows in sizes * 100:
        assert step(t, clock, {2: 0.025 + 0.0075 * (rows - 1), 1: 0.5}, rows) == 2
    assert t.switches == 0
    assert step(t, clock, {2: 0.9, 1: 0.1}, 8) == 2  # the stall itself
    assert step(t, clock, {2: 0.9, 1: 0.1}, 8) == 1
