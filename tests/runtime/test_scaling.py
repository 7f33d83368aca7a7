"""The pool's scaling rules as plain policy: when to grow, what to ask the autoscaler for,
and which streams to move so load evens out without streams bouncing."""

from __future__ import annotations

from fpnstream.config.settings import RayConfig
from fpnstream.runtime.scaling import Placement, ScalingPolicy


def policy(clock=lambda: 100.0, **cfg) -> ScalingPolicy:
    return ScalingPolicy(RayConfig(**cfg), elastic=True, clock=clock)


def test_grows_only_into_spare_capacity_one_worker_at_a_time_up_to_the_maximum():
    p = policy(max_actors=3)
    assert p.should_grow(workers=1, pending=0, spare_capacity=True)
    assert not p.should_grow(workers=1, pending=1, spare_capacity=True)  # one is still joining
    assert not p.should_grow(workers=1, pending=0, spare_capacity=False)
    assert not p.should_grow(workers=3, pending=0, spare_capacity=True)
    fixed = ScalingPolicy(RayConfig(num_actors=2), elastic=False)
    assert not fixed.should_grow(workers=2, pending=0, spare_capacity=True) and fixed.moves([], [0, 1]) == []


def test_wanted_workers_follow_streams_per_worker_within_the_maximum():
    p = policy(streams_per_worker=4, max_actors=10)
    assert [p.wanted_workers(n) for n in (0, 1, 4, 5, 17, 1000)] == [1, 1, 1, 2, 5, 10]


def test_a_new_worker_gets_half_of_the_streams_and_they_stay():
    now = [100.0]
    p = policy(clock=lambda: now[0], balance_cooldown_s=30)
    placed = [Placement(f"s{i}", 0, 0.0) for i in range(6)]
    moves = p.moves(placed, [0, 1])
    assert len(moves) == 3 and {dst for _, dst in moves} == {1}
    by_id = {x.stream_id: x for x in placed}
    for sid, dst in moves:
        by_id[sid].worker, by_id[sid].moved_at = dst, now[0]
    assert p.moves(placed, [0, 1]) == []  # balanced: nothing more to do
    # worker 1 went away and its streams came back to 0; it returns 5 s later: only streams
    # that were not moved within the cooldown may go to it (no ping-pong)
    for x in placed:
        x.worker = 0
    now[0] += 5
    again = p.moves(placed, [0, 1])
    assert again and all(by_id[sid].moved_at == -float("inf") for sid, _ in again)


def test_balance_weighs_streams_by_measured_rate():
    p = policy(balance_tolerance=1.0)
    heavy = Placement("busy-cam", 0, 60.0)  # 60 frames/s: weight 6
    light = [Placement(f"l{i}", 1, 5.0) for i in range(6)]  # weight 1 each
    assert p.moves([heavy, *light], [0, 1]) == []  # 6 against 6: already even
    light += [Placement("l6", 1, 5.0), Placement("l7", 1, 5.0)]
    assert p.moves([heavy, *light], [0, 1]) == [("l0", 0)]  # 6 vs 8 -> 7 vs 7
