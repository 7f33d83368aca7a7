"""GatherRoIAlign against torchvision's MultiScaleRoIAlign on the same features and boxes."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from fpnstream.detection.roi_gather import GatherRoIAlign, gather_roi_pool


def _boxes(n: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    # Some start outside the image and some reach past it: roi_align's border rules matter.
    x1 = torch.rand(n, generator=gen) * width * 1.2 - 0.1 * width
    y1 = torch.rand(n, generator=gen) * height * 1.2 - 0.1 * height
    boxes = torch.stack([x1, y1, x1 + torch.rand(n, generator=gen) * width * 0.6,
                         y1 + torch.rand(n, generator=gen) * height * 0.6], 1)
    boxes[:4, 2:] = boxes[:4, :2] + 0.25  # under a pixel: roi_align widens them to one
    return boxes


@pytest.mark.parametrize("levels, image, counts", [
    ([(200, 336), (100, 168), (50, 84), (25, 42)], (800, 1344), [300, 0, 120]),  # resnet50 FPN, 3 images
    ([(10, 18), (10, 18)], (320, 576), [150]),  # mobilenet-320: two levels of one stride
    ([(16, 24)], (128, 192), [40, 7]),  # one level: no level mapping
])
def test_pools_what_torchvision_pools(levels, image, counts):
    gen = torch.Generator().manual_seed(3)
    names = [str(i) for i in range(len(levels))]
    feats = OrderedDict((n, torch.randn(len(counts), 32, h, w, generator=gen)) for n, (h, w) in zip(names, levels))
    feats["pool"] = torch.randn(len(counts), 32, 1, 1, generator=gen)  # not a pooled level: must be left out
    boxes = [_boxes(k, *image, gen) for k in counts]
    shapes = [image] * len(counts)
    expected = MultiScaleRoIAlign(names, 7, 2)(feats, boxes, shapes)
    got = GatherRoIAlign(MultiScaleRoIAlign(names, 7, 2))(feats, boxes, shapes)
    assert got.shape == expected.shape == (sum(counts), 32, 7, 7)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 1  # real values compared, not zeros


def test_an_adaptive_sampling_ratio_keeps_torchvision():
    class Model(torch.nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.roi_heads = torch.nn.Module()
            self.roi_heads.box_roi_pool = pool

    adaptive = Model(MultiScaleRoIAlign(["0"], 7, 0))
    assert not gather_roi_pool(adaptive) and isinstance(adaptive.roi_heads.box_roi_pool, MultiScaleRoIAlign)
    fixed = Model(MultiScaleRoIAlign(["0"], 7, 2))
    assert gather_roi_pool(fixed) and isinstance(fixed.roi_heads.box_roi_pool, GatherRoIAlign)


def test_a_batch_without_proposals_pools_nothing():
    feats = OrderedDict((n, torch.randn(2, 8, 16, 16)) for n in ("0", "1"))
    boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    pooled = GatherRoIAlign(MultiScaleRoIAlign(["0", "1"], 7, 2))(feats, boxes, [(64, 64)] * 2)
    assert pooled.shape == (0, 8, 7, 7)
