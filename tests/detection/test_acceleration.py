"""The opt-in fast paths on the CPU, each against fp32 eager with the seeded firing
checkpoint: what they change, and what the accuracy check says about them."""

from __future__ import annotations

import pytest
import torch

from fpnstream.core.errors import ConfigError
from fpnstream.config.settings import ModelConfig, build_config
from fpnstream.detection.acceleration import DynamicBatch, PaddedRows
from fpnstream.detection.accuracy import match_rate
from fpnstream.detection.model import Detector
from fpnstream.devtools.synthetic import synthetic_frame
from tests.conftest import SMALL_MODEL
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


def small_cfg(ckpt, **kw) -> ModelConfig:
    # The compile test's model: the mobilenet FPN compiles in about 2/3 of resnet50's time
    # (cold inductor, 2 cores: 73 s vs ~115 s for two graph sets), and the graph mechanics
    # under test are the same.
    return ModelConfig(name=SMALL_MODEL, weights=str(ckpt), score_threshold=0.5, min_size=120, max_size=160,
                       device="cpu", **kw)


def test_compiled_backbone_is_warmed_up_at_load_for_every_batch_size_and_keeps_every_detection(small_checkpoint):
    from torch._dynamo.utils import counters

    fp32 = Detector.from_config(small_cfg(small_checkpoint)).detect(frames_of(IMAGES)).detections
    # One warmed-up size (160x120) keeps the cold inductor compile to two graph sets: batch 1
    # and a batch of max_batch, whose batch dimension is dynamic, so the batches of 2 that a
    # deadline closes do not compile mid-run.
    det = Detector.from_config(small_cfg(small_checkpoint, compile=True, warmup_sizes=["160x120"]), max_batch=3)
    heads = det.model.roi_heads
    assert all(isinstance(m, DynamicBatch) and hasattr(m.inner, "_orig_mod") for m in (det.model.backbone,
                                                                                    det.model.rpn.head))
    # on a CPU the heads stay eager (one GEMM each; compiling them did not pay, measured)
    assert not any(isinstance(m, PaddedRows) for m in (heads.box_head, heads.box_predictor))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "the warm-up compiled"
    singles = [det.detect(frames_of([image])).detections[0] for image in IMAGES]
    pairs = [d for i in (0, 2) for d in det.detect(frames_of(IMAGES[i:i + 2])).detections]
    triple = det.detect(frames_of(IMAGES[:3])).detections
    assert counters["stats"]["unique_graphs"] == graphs, "a warmed-up size must not compile again, at any batch size"
    # what the backend tells the hang watchdog: only a size the warm-up did not cover compiles
    assert not det.will_compile(frames_of(IMAGES[:1])) and not det.will_compile(frames_of(IMAGES[:2]))
    assert det.will_compile(frames_of([synthetic_frame(0, 120, 160)]))
    assert not Detector.from_config(small_cfg(small_checkpoint)).will_compile(frames_of(IMAGES[:1]))  # eager
    assert sum(len(d) for d in fp32) > 100  # the seeded checkpoint fires: the match below means something
    for detections in (singles, pairs, list(triple) + singles[3:]):
        report = match_rate(fp32, detections, min_score=0.5)
        assert report.passed, report


def test_padded_rows_runs_a_bucket_of_rows_and_returns_each_row_unchanged():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU()).eval()
    seen = []

    class TwoOutputs(torch.nn.Module):  # shaped like the predictor: (scores, deltas)
        def forward(self, x):
            seen.append(x.shape[0])
            return head(x), 2 * head(x)

    padded = PaddedRows(TwoOutputs(), step=3)
    for rows in (0, 1, 3, 4, 12, 13, 17):
        x = torch.randn(rows, 3, 2, 2)
        scores, deltas = padded(x)
        torch.testing.assert_close(scores, head(x))
        torch.testing.assert_close(deltas, 2 * head(x))
    # k = ceil(rows / 3) proposals' worth, rounded up to a power of two above 4
    assert seen == [3, 3, 3, 6, 12, 24, 24]


def test_padded_rows_give_a_static_shape_graph_one_per_bucket():
    """What CUDA graphs need (compile on CUDA wraps the heads so): varying row counts within
    a bucket reuse one traced graph. Dynamo's eager backend: the same guards, no codegen."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    head = torch.nn.Linear(8, 4).eval()
    padded = PaddedRows(torch.compile(head, backend="eager", dynamic=False), step=150)
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for rows in (150, 149, 97, 1, 150):
            x = torch.randn(rows, 8)
            torch.testing.assert_close(padded(x), head(x))
        assert counters["stats"]["unique_graphs"] == before + 1
        padded(torch.randn(151, 8))  # two images' worth: the next bucket
    assert counters["stats"]["unique_graphs"] == before + 2


def test_openvino_backbone_keeps_every_detection(firing_checkpoint, fp32):
    from fpnstream.detection.acceleration import OpenVinoBackbone

    det = Detector.from_config(parity_cfg(firing_checkpoint, backbone_runtime="openvino"))
    assert isinstance(det.model.backbone, OpenVinoBackbone)
    report = match_rate(fp32, det.detect(frames_of(IMAGES)).detections, min_score=0.5)
    assert report.passed and report.rate == 1.0, report


def test_bf16_box_head_casts_only_the_box_head_linears_and_keeps_the_detections(firing_checkpoint, fp32):
    from fpnstream.detection.acceleration import Bf16Linear, bf16_box_head, native_bf16

    # The module itself runs on any CPU (oneDNN emulates bf16 where the CPU lacks it).
    det = Detector.from_config(parity_cfg(firing_checkpoint))
    bf16_box_head(det.model)
    head = det.model.roi_heads.box_head
    assert isinstance(head.fc6, Bf16Linear) and isinstance(head.fc7, Bf16Linear)
    assert head.fc6.weight.dtype == torch.bfloat16 and head.fc6.bias.dtype == torch.float32
    assert isinstance(det.model.roi_heads.box_predictor.cls_score, torch.nn.Linear)  # scores stay fp32
    assert all(p.dtype == torch.float32 for p in det.model.backbone.parameters())
    report = match_rate(fp32, det.detect(frames_of(IMAGES)).detections, min_score=0.5)
    assert report.passed, report
    # The config switch applies it only where the CPU multiplies bf16 in hardware.
    configured = Detector.from_config(parity_cfg(firing_checkpoint, precision="bf16"))
    assert configured.precision == ("bf16" if native_bf16() else "fp32")
    assert isinstance(configured.model.roi_heads.box_head.fc6, Bf16Linear) == native_bf16()


def test_gather_roi_align_keeps_every_detection(firing_checkpoint, fp32):
    from fpnstream.detection.roi_gather import GatherRoIAlign

    det = Detector.from_config(parity_cfg(firing_checkpoint, roi_align="gather"))
    assert isinstance(det.model.roi_heads.box_roi_pool, GatherRoIAlign)
    report = match_rate(fp32, det.detect(frames_of(IMAGES)).detections, min_score=0.5)
    assert report.passed and report.rate == 1.0, report


def test_bad_warmup_size_is_one_line():
    with pytest.raises(ConfigError) as e:
        build_config({"model": {"warmup_sizes": ["1280by720"]}})
    assert "1280by720" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.gpu
def test_compiled_on_cuda_covers_the_heads_warms_up_once_and_keeps_every_detection(firing_checkpoint):
    """On CUDA compile means CUDA graphs (`reduce-overhead`), so every dense part has a
    static shape: the heads run on padded rows, and after the warm-up no frame compiles."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from torch._dynamo.utils import counters

    fp32 = Detector.from_config(parity_cfg(firing_checkpoint, device="cuda")).detect(frames_of(IMAGES)).detections
    det = Detector.from_config(parity_cfg(firing_checkpoint, device="cuda", compile=True, warmup_sizes=["160x120"]),
                               max_batch=4)
    heads = det.model.roi_heads
    assert all(isinstance(m, PaddedRows) and hasattr(m.inner, "_orig_mod") for m in (heads.box_head, heads.box_predictor))
    graphs = counters["stats"]["unique_graphs"]
    singles = [det.detect(frames_of([image])).detections[0] for image in IMAGES]
    pairs = [d for i in (0, 2) for d in det.detect(frames_of(IMAGES[i:i + 2])).detections]
    assert counters["stats"]["unique_graphs"] == graphs, "a warmed-up size must not compile again, at any batch size"
    for detections in (singles, pairs):
        report = match_rate(fp32, detections, min_score=0.5)
        assert report.passed, report
