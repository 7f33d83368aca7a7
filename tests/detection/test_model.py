import numpy as np
import pytest
import torch

from fpnstream.config.settings import ModelConfig
from fpnstream.core.errors import ModelError
from fpnstream.core.frames import Frame
from fpnstream.detection.model import COCO_CATEGORIES, Detector, build_model
from fpnstream.devtools.synthetic import synthetic_frame
from tests.conftest import PARITY_MAX_SIZE, PARITY_MIN_SIZE, PARITY_MODEL, SMALL_MODEL
from tests.parity import match_detections, torchvision_reference


def frames_of(images, stream="s"):
    return [Frame(img, stream, i, i / 30, 0.0) for i, img in enumerate(images)]


def parity_cfg(ckpt, **kw) -> ModelConfig:
    return ModelConfig(name=PARITY_MODEL, weights=str(ckpt), score_threshold=0.5,
                       min_size=PARITY_MIN_SIZE, max_size=PARITY_MAX_SIZE, **{"device": "cpu", **kw})


def test_detector_matches_torchvision_per_frame(firing_checkpoint):
    images = [synthetic_frame(i, 160, 120, seed=5) for i in range(0, 30, 6)]
    det = Detector.from_config(parity_cfg(firing_checkpoint))
    ref = torchvision_reference(PARITY_MODEL, firing_checkpoint, images, box_score_thresh=0.5,
                                min_size=PARITY_MIN_SIZE, max_size=PARITY_MAX_SIZE)
    total = 0
    for img, r in zip(images, ref):  # batch of one: must be exact
        (ours,) = det.detect(frames_of([img])).detections
        assert np.array_equal(ours.labels, r["labels"])
        np.testing.assert_allclose(ours.boxes, r["boxes"], atol=0.01)
        np.testing.assert_allclose(ours.scores, r["scores"], atol=1e-3)
        assert ours.names == tuple(COCO_CATEGORIES[i] for i in r["labels"])
        total += len(ours)
    # The checkpoint must really fire, or this test proves nothing.
    assert total >= 5 * 20
    assert len({int(l) for r in ref for l in r["labels"]}) >= 3


def test_batched_detection_moves_at_most_a_few_boxes(firing_checkpoint):
    images = [synthetic_frame(i, 160, 120, seed=6) for i in range(4)]
    det = Detector.from_config(parity_cfg(firing_checkpoint))
    ref = torchvision_reference(PARITY_MODEL, firing_checkpoint, images, box_score_thresh=0.5,
                                min_size=PARITY_MIN_SIZE, max_size=PARITY_MAX_SIZE)
    result = det.detect(frames_of(images))
    matched = unmatched = 0
    for ours, r in zip(result.detections, ref):
        m, u_ours, u_ref = match_detections(ours.to_json_list(), r)
        matched, unmatched = matched + m, unmatched + max(u_ours, u_ref)
    assert matched >= 60
    assert unmatched <= max(2, 0.02 * matched)
    assert result.times.inference > 0


def test_class_allow_list_and_max_detections(firing_checkpoint):
    img = synthetic_frame(3, 160, 120, seed=5)
    full = Detector.from_config(parity_cfg(firing_checkpoint, max_detections=1000)).detect(frames_of([img])).detections[0]
    assert len(full) < 300
    top_name = max(set(full.names), key=full.names.count)
    only = Detector.from_config(parity_cfg(firing_checkpoint, classes=(top_name,), max_detections=40)).detect(frames_of([img])).detections[0]
    assert set(only.names) == {top_name}
    # The allow-list filters before the per-frame cap, so the cap counts allowed classes only.
    assert len(only) == min(40, full.names.count(top_name))
    np.testing.assert_allclose(only.scores, full.scores[np.array(full.names) == top_name][:40], atol=1e-6)
    capped = Detector.from_config(parity_cfg(firing_checkpoint, max_detections=3)).detect(frames_of([img])).detections[0]
    np.testing.assert_allclose(capped.scores, full.scores[:3], atol=1e-6)


def test_unknown_allow_list_class(firing_checkpoint):
    with pytest.raises(ModelError, match="unknown class name.*unicorn"):
        Detector.from_config(parity_cfg(firing_checkpoint, classes=("person", "unicorn")))


def test_checkpoint_with_embedded_names_and_labels_file(tmp_path, small_checkpoint):
    from fpnstream.devtools.testing import make_firing_model, save_checkpoint

    model = make_firing_model(SMALL_MODEL, [synthetic_frame(0, 160, 120)], num_classes=4, boosted_labels=(1, 2))
    names = ["__background__", "forklift", "pallet", "worker"]
    ckpt = save_checkpoint(model, tmp_path / "custom.pt", class_names=names)
    _, got = build_model(ModelConfig(name=SMALL_MODEL, weights=str(ckpt)))
    assert got == names
    labels = tmp_path / "labels.txt"
    labels.write_text("truck\ncone\nvest\n")  # background omitted
    _, got = build_model(ModelConfig(name=SMALL_MODEL, weights=str(ckpt), labels=str(labels)))
    assert got == ["__background__", "truck", "cone", "vest"]
    labels.write_text("a\nb\n")
    with pytest.raises(ModelError, match="2 class names given for a model with 4 classes"):
        build_model(ModelConfig(name=SMALL_MODEL, weights=str(ckpt), labels=str(labels)))
    labels.write_bytes(b"truck\n\xff\xfe\n")
    with pytest.raises(ModelError, match="is not UTF-8 text"):
        build_model(ModelConfig(name=SMALL_MODEL, weights=str(ckpt), labels=str(labels)))


def test_checkpoint_for_other_architecture_rejected(small_checkpoint):
    with pytest.raises(ModelError, match="does not match fasterrcnn_resnet50_fpn"):
        build_model(ModelConfig(name="fasterrcnn_resnet50_fpn", weights=str(small_checkpoint)))


def test_bad_weights_files(tmp_path):
    with pytest.raises(ModelError, match="weights file not found"):
        build_model(ModelConfig(name=SMALL_MODEL, weights=str(tmp_path / "missing.pth")))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        build_model(ModelConfig(name=SMALL_MODEL, weights=str(junk)))


def test_frozen_bn_layout_checkpoint_loads(tmp_path, small_checkpoint):
    """Checkpoints fine-tuned from torchvision's pretrained models lack num_batches_tracked."""
    state = torch.load(small_checkpoint, weights_only=True)  # a bare state_dict
    stripped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(stripped) < len(state)
    torch.save(stripped, tmp_path / "frozen.pth")
    model, _ = build_model(ModelConfig(name=SMALL_MODEL, weights=str(tmp_path / "frozen.pth")))
    assert torch.equal(model.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       state["roi_heads.box_predictor.cls_score.weight"])


def test_default_weights_offline_fail_clearly_or_fall_back(tmp_path, monkeypatch, caplog):
    # No network here and an empty TORCH_HOME: the download must fail with a clear message.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="cannot get pretrained weights .*--weights PATH"):
        build_model(ModelConfig(name=SMALL_MODEL, weights="DEFAULT"))
    model, names = build_model(ModelConfig(name=SMALL_MODEL, weights="DEFAULT", weights_fallback="random"))
    assert names == list(COCO_CATEGORIES)
    assert "RANDOM weights" in caplog.text


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_other_architectures_build_and_run(name):
    det = Detector.from_config(ModelConfig(name=name, weights="none", device="cpu", min_size=64, max_size=96, score_threshold=0.0))
    result = det.detect(frames_of([synthetic_frame(0, 96, 64)]))
    assert len(result.detections) == 1 and result.metas[0].width == 96


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ModelError, match="CUDA is not available"):
        Detector.from_config(ModelConfig(name=SMALL_MODEL, weights="none", device="cuda"))


@pytest.mark.gpu
def test_gpu_detector_matches_cpu_closely(small_checkpoint):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    img = synthetic_frame(0, 160, 120)
    cpu = Detector.from_config(ModelConfig(name=SMALL_MODEL, weights=str(small_checkpoint), device="cpu")).detect(frames_of([img]))
    gpu = Detector.from_config(ModelConfig(name=SMALL_MODEL, weights=str(small_checkpoint), device="cuda")).detect(frames_of([img]))
    m, u_ours, u_ref = match_detections(gpu.detections[0].to_json_list(), {
        "boxes": cpu.detections[0].boxes, "scores": cpu.detections[0].scores, "labels": cpu.detections[0].labels},
        box_tol=0.5, score_tol=1e-2)
    assert m >= 0.9 * len(cpu.detections[0])


def test_batched_preprocessing_equals_torchvision_transform(small_checkpoint):
    det = Detector.from_config(ModelConfig(name=SMALL_MODEL, weights=str(small_checkpoint), device="cpu"))
    for w, h in ((160, 120), (161, 121)):  # 161x121 resizes to a size that needs padding
        images = [synthetic_frame(i, w, h) for i in range(3)]
        ours, original = det._preprocess(images)
        theirs, _ = det.model.transform([torch.from_numpy(i).permute(2, 0, 1).float().div_(255.0) for i in images])
        assert original == (h, w)
        assert ours.image_sizes == theirs.image_sizes
        assert ours.tensors.shape == theirs.tensors.shape and torch.equal(ours.tensors, theirs.tensors)


def test_mixed_sizes_in_one_batch_equal_frames_alone(firing_checkpoint):
    det = Detector.from_config(parity_cfg(firing_checkpoint))
    a, b, c = synthetic_frame(1, 160, 120, seed=5), synthetic_frame(2, 200, 150, seed=5), synthetic_frame(3, 160, 120, seed=5)
    frames = [Frame(a, "x", 0, 0.0, 0.0), Frame(b, "y", 0, 0.0, 0.0), Frame(c, "z", 0, 0.0, 0.0)]
    batch = det.detect(frames)
    assert [m.stream_id for m in batch.metas] == ["x", "y", "z"]
    # b is alone in its size group: exactly what it gives on its own
    (alone,) = det.detect([frames[1]]).detections
    assert np.array_equal(batch.detections[1].labels, alone.labels) and len(alone) > 0
    np.testing.assert_allclose(batch.detections[1].boxes, alone.boxes, atol=0.01)
    assert batch.metas[1].width == 200


def test_match_rate_counts_label_and_iou():
    from fpnstream.detection.accuracy import match_rate
    from fpnstream.core.frames import Detections

    ref = Detections(np.array([[0, 0, 100, 100], [200, 200, 300, 300], [0, 0, 10, 10]], np.float32),
                     np.array([0.9, 0.8, 0.3], np.float32), np.array([1, 2, 3]), ("a", "b", "c"))
    same = match_rate([ref], [ref], min_score=0.5)
    assert (same.matched, same.total, same.passed) == (2, 2, True)
    nudged = Detections(ref.boxes + np.array([2, 0, 2, 0], np.float32), ref.scores, ref.labels, ref.names)
    assert match_rate([ref], [nudged], min_score=0.5).rate == 1.0  # IoU 0.96
    moved = Detections(ref.boxes + np.array([15, 0, 15, 0], np.float32), ref.scores, ref.labels, ref.names)
    assert match_rate([ref], [moved], min_score=0.5).matched == 0  # IoU 0.74
    relabelled = Detections(ref.boxes, ref.scores, np.array([1, 5, 3]), ref.names)
    r = match_rate([ref], [relabelled], min_score=0.5)
    assert (r.matched, r.passed) == (1, False)
    one_box = Detections(ref.boxes[:1], ref.scores[:1], ref.labels[:1], ref.names[:1])
    dup = Detections(np.repeat(ref.boxes[:1], 2, axis=0), np.array([0.9, 0.9], np.float32), np.array([1, 1]), ("a", "a"))
    assert match_rate([dup], [one_box]).matched == 1  # one-to-one
    # duplicates a broken NMS would let through: everything matched, still a failure
    doubled = match_rate([one_box], [dup])
    assert (doubled.rate, doubled.extra, doubled.passed) == (1.0, 1, False)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_autocast_channels_last_runs_and_is_checked(firing_checkpoint, precision):
    """On CUDA: low precision and NHWC run end to end, boxes come back fp32, and the accuracy
    check gives a verdict. (Whether it passes depends on the weights: the seeded random
    checkpoint is hypersensitive, see test_low_precision_covers_only_the_dense_layers.)"""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from fpnstream.detection.accuracy import match_rate

    images = [synthetic_frame(i, 160, 120, seed=5) for i in range(0, 40, 5)]
    fp32 = Detector.from_config(parity_cfg(firing_checkpoint, device="cuda")).detect(frames_of(images))
    fast = Detector.from_config(parity_cfg(firing_checkpoint, device="cuda", precision=precision, channels_last=True))
    assert fast.precision == precision
    result = fast.detect(frames_of(images))
    assert all(d.boxes.dtype == np.float32 for d in result.detections)
    report = match_rate(fp32.detections, result.detections, min_score=0.5)
    assert report.total >= 100 and 0 <= report.rate <= 1
    same = match_rate(fp32.detections, Detector.from_config(parity_cfg(firing_checkpoint, device="cuda",
                      channels_last=True)).detect(frames_of(images)).detections, min_score=0.5)
    assert same.passed, same  # fp32 in NHWC: the same detections


def test_low_precision_covers_only_the_dense_layers(firing_checkpoint):
    """The autocast wrapping, exercised with CPU bf16 (CUDA uses the same code): dense layers
    run in bf16, everything after them sees fp32, so boxes and NMS stay fp32."""
    from fpnstream.detection.accuracy import match_rate
    from fpnstream.detection.acceleration import _LowPrecision, use_low_precision

    images = [synthetic_frame(i, 160, 120, seed=5) for i in range(0, 20, 5)]
    det = Detector.from_config(parity_cfg(firing_checkpoint))
    fp32 = det.detect(frames_of(images)).detections
    seen = []
    use_low_precision(det.model, torch.bfloat16, "cpu")
    det.model.roi_heads.box_predictor.inner.cls_score.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    det.model.rpn.box_coder.decode = (lambda f: lambda codes, boxes: seen.append(codes.dtype) or f(codes, boxes))(
        det.model.rpn.box_coder.decode)
    low = det.detect(frames_of(images))
    assert isinstance(det.model.backbone, _LowPrecision) and isinstance(det.model.rpn.head, _LowPrecision)
    assert torch.bfloat16 in seen and torch.float32 in seen  # bf16 inside the head, fp32 into decoding
    assert all(d.boxes.dtype == np.float32 for d in low.detections)
    assert sum(len(d) for d in low.detections) > 0
    # The seeded random checkpoint is calibrated to saturate, which makes it far more
    # sensitive to precision than trained weights: bf16 changes most of its boxes. This is
    # what the accuracy check is for, and why fp32 stays the default.
    report = match_rate(fp32, low.detections, min_score=0.5)
    assert report.total > 50 and not report.passed
