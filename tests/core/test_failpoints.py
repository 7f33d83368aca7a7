"""Failpoints: inert unless set, and a spec they cannot follow is refused at once."""

from __future__ import annotations

import pytest

from fpnstream.core.errors import ConfigError
from fpnstream.core.failpoints import Failpoints


def test_unset_is_inert_and_after_counts_hits(tmp_path):
    assert not Failpoints.from_environ({}).active
    fp = Failpoints("detector.crash:after=2")
    assert [fp.fires("detector.crash") for _ in range(4)] == [False, False, True, True]
    once = Failpoints(f"detector.hang:once={tmp_path / 'm'}")
    assert once.fires("detector.hang") and not Failpoints(f"detector.hang:once={tmp_path / 'm'}").fires("detector.hang")


@pytest.mark.parametrize("spec", ["detector.crash:after=abc", "detector.crsh:after=1", "detector.hang:after",
                                  "detector.hang:every=2", "detector.hang:once="])
def test_a_spec_it_cannot_follow_is_refused(spec):
    # A failpoint that never fires as asked would pass a fault test for the wrong reason,
    # and one that raises in a worker's load restarted that worker forever.
    with pytest.raises(ConfigError, match="FPNSTREAM_FAILPOINTS"):
        Failpoints(spec)
