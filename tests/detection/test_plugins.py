"""`model.plugin`: the user's own detector in place of torchvision's, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from fpnstream.config.settings import ModelConfig
from fpnstream.core.errors import ModelError
from fpnstream.core.frames import Frame
from fpnstream.detection.plugins import load_detector
from fpnstream.devtools.synthetic import MovingSquare, scene_drawer


def not_a_detector(cfg, max_batch):
    return object()


@pytest.mark.parametrize("plugin, message", [
    ("nosuch_module_x:factory", "cannot import nosuch_module_x"),
    ("fpnstream.devtools.blobs:nope", "has no nope"),
    ("tests.detection.test_plugins:not_a_detector", "lacks detect, lanes, model_name, device"),
    ("os:getcwd", "cannot be called as factory"),  # a callable, but not of (cfg, max_batch)
])
def test_a_bad_plugin_is_one_clear_error(plugin, message):
    with pytest.raises(ModelError, match=message):
        load_detector(ModelConfig(plugin=plugin))


def test_plugin_must_name_module_and_factory():
    with pytest.raises(ValueError):
        ModelConfig(plugin="just_a_module")


def test_blob_plugin_finds_each_square_where_it_is_drawn():
    squares = [MovingSquare(0, 9, 10, 20, 2, 0), MovingSquare(0, 9, 90, 60, 0, 3, size=20)]
    draw = scene_drawer(squares)
    detector = load_detector(ModelConfig(plugin="fpnstream.devtools.blobs:blob_detector"))
    frames = [Frame(draw(i, 160, 120), "s", i, i / 30, float(i)) for i in (0, 5)]
    result = detector.detect(frames)
    for frame, dets in zip(frames, result.detections):
        want = sorted(s.box(frame.index) for s in squares)
        assert sorted(tuple(int(v) for v in b) for b in dets.boxes) == want
        assert dets.names == ("object", "object")
