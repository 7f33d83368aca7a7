"""The hung-worker rule, on its own."""

from fpnstream.core.health import DetectorProgress, HangPolicy


def test_a_batch_is_hung_past_the_larger_of_its_recent_times_and_the_floor():
    policy = HangPolicy(factor=10, floor_s=60, compile_floor_s=900)
    assert not policy.is_hung(DetectorProgress(running_s=59, batch_s=0.5))
    assert policy.is_hung(DetectorProgress(running_s=61, batch_s=0.5))
    assert not policy.is_hung(DetectorProgress(running_s=99, batch_s=10))  # slow batches lately: 100 s allowed
    assert policy.is_hung(DetectorProgress(running_s=101, batch_s=10))


def test_a_compiling_batch_gets_the_compile_floor():
    policy = HangPolicy(factor=10, floor_s=60, compile_floor_s=900)
    assert not policy.is_hung(DetectorProgress(running_s=300, batch_s=0.5, compiling=True))
    assert policy.is_hung(DetectorProgress(running_s=901, batch_s=0.5, compiling=True))
    assert policy.is_hung(DetectorProgress(running_s=300, batch_s=0.5, compiling=False))
