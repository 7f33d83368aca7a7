"""The opt-in fast paths on the CPU, each against fp32 eager with the seeded firing
checkpoint: what they change, and what the accuracy check says about them."""

from __future__ import annotations

import pytest
import torch

from fpnstream.core.errors import ConfigError
from fpnstream.config.settings import build_config
from fpnstream.detection.accuracy import match_rate
from fpnstream.detection.model import Detector
from fpnstream.devtools.synthetic import synthetic_frame
from tests.detection.test_model import frames_of, parity_cfg

IMAGES = [synthetic_frame(i, 160, 120, seed=5) for i in range(0, 20, 5)]


@pytest.fixture(scope="module")
def fp32(firing_checkpoint):
    return Detector.from_config(parity_cfg(firing_checkpoint)).detect(frames_of(IMAGES)).detections


def test_int8_quantizes_only_the_box_head_linears_and_is_checked(firing_checkpoint, fp32):
    det = Detector.from_config(parity_cfg(firing_checkpoint, precision="int8"))
    assert det.precision == "int8"
    head = det.model.roi_heads.box_head
    assert all(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in (head.fc6, head.fc7))
    assert not any(type(m).__module__.startswith("torch.ao") for m in det.model.backbone.modules())  # convs stay fp32
    report = match_rate(fp32, det.detect(frames_of(IMAGES)).detections, min_score=0.5)
    assert report.total > 50 and 0 < report.rate <= 1  # the verdict is the bench's to report


def test_channels_last_on_cpu_keeps_every_detection(firing_checkpoint, fp32):
    det = Detector.from_config(parity_cfg(firing_checkpoint, channels_last=True))
    assert next(det.model.backbone.parameters()).is_contiguous(memory_format=torch.channels_last)
    report = match_rate(fp32, det.detect(frames_of(IMAGES)).detections, min_score=0.5)
    assert report.passed, report


def test_compiled_backbone_is_warmed_up_at_load_and_keeps_every_detection(firing_checkpoint, fp32):
    from torch._dynamo.utils import counters

    # One warmed-up shape (batch 1 at 160x120) keeps the cold inductor compile to one graph
    # set; every batch size the pipeline forms (1 and batch.max_size) is warmed the same way.
    det = Detector.from_config(parity_cfg(firing_checkpoint, compile=True, warmup_sizes=["160x120"]), max_batch=1)
    assert hasattr(det.model.backbone, "_orig_mod") and hasattr(det.model.rpn.head, "_orig_mod")
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "the warm-up compiled"
    detections = [det.detect(frames_of([image])).detections[0] for image in IMAGES]  # the warmed-up shape
    assert counters["stats"]["unique_graphs"] == graphs, "a warmed-up size and batch must not compile again"
    report = match_rate(fp32, detections, min_score=0.5)
    assert report.passed, report


def test_openvino_backbone_keeps_every_detection(firing_checkpoint, fp32):
    from fpnstream.detection.acceleration import OpenVinoBackbone

    det = Detector.from_config(parity_cfg(firing_checkpoint, backbone_runtime="openvino"))
    assert isinstance(det.model.backbone, OpenVinoBackbone)
    report = match_rate(fp32, det.detect(frames_of(IMAGES)).detections, min_score=0.5)
    assert report.passed and report.rate == 1.0, report


def test_bad_warmup_size_is_one_line():
    with pytest.raises(ConfigError) as e:
        build_config({"model": {"warmup_sizes": ["1280by720"]}})
    assert "1280by720" in str(e.value) and "\n" not in str(e.value)
