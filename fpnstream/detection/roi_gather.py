"""RoIAlign over the FPN levels as one weighted gather-sum, for the CPU.

torchvision's CPU `roi_align` walks every RoI, channel and sample in scalar code: on a
mobilenet-320 pass over a 640x360 frame it took 15-19 ms of the ~50 ms left once the
backbone and box head were fast (benchmarks/RESULTS.md). Each output value is a weighted
sum of 4 x sampling_ratio^2 feature values (bilinear taps at the bin's sample points), so
the whole pooling is a sparse matrix times the features laid out as rows of channels:
exactly what `torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)` does,
vectorised over the channels (FBGEMM on x86), for every level and image in one call.

Same sample points, bilinear weights and border rules as torchvision's `roi_align` with
`aligned=False` and a fixed `sampling_ratio` (what every torchvision FPN detector uses);
the sums are added in another order, so values differ from torchvision's in the last bits
(~1e-6): opt-in, and checked like every fast mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign


def gather_roi_pool(model: torch.nn.Module) -> bool:
    """Swap the box head's RoI pooling for `GatherRoIAlign` where it applies; whether it did."""
    pool = model.roi_heads.box_roi_pool
    if not isinstance(pool, MultiScaleRoIAlign) or pool.sampling_ratio <= 0:
        return False  # an adaptive sample count differs per RoI: leave it to torchvision
    model.roi_heads.box_roi_pool = GatherRoIAlign(pool)
    return True


class GatherRoIAlign(torch.nn.Module):
    """A drop-in for torchvision's `MultiScaleRoIAlign` (which it keeps for its level
    mapping and scales) computing the pooling with one `embedding_bag`."""

    def __init__(self, pool: MultiScaleRoIAlign) -> None:
        super().__init__()
        self.pool = pool
        self.out_h, self.out_w = pool.output_size
        self.sampling_ratio = pool.sampling_ratio

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        pool = self.pool
        if pool.scales is None or pool.map_levels is None:
            pool(x, [b[:0] for b in boxes], image_shapes)  # torchvision infers its scales and level mapper
        feats = [v for k, v in x.items() if k in pool.featmap_names]  # as torchvision filters them
        channels = feats[0].shape[1]
        all_boxes = torch.cat(boxes)
        if len(feats) == 1:
            levels = torch.zeros(len(all_boxes), dtype=torch.int64, device=all_boxes.device)
        else:
            levels = pool.map_levels(boxes)
        # Rows of channels: every level's every pixel of every image, one after another.
        table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in feats]).contiguous()
        images = torch.repeat_interleave(torch.arange(len(boxes), device=all_boxes.device),
                                         torch.tensor([len(b) for b in boxes], device=all_boxes.device))
        heights = torch.tensor([f.shape[2] for f in feats], device=all_boxes.device)
        widths = torch.tensor([f.shape[3] for f in feats], device=all_boxes.device)
        starts = torch.tensor([0] + [f.numel() // channels for f in feats][:-1], device=all_boxes.device).cumsum(0)
        scales = torch.tensor(pool.scales, dtype=all_boxes.dtype, device=all_boxes.device)
        h, w = heights[levels], widths[levels]
        first_row = starts[levels] + images * h * w
        index, weight = self._taps(all_boxes * scales[levels, None], h, w, first_row)
        pooled = F.embedding_bag(index, table, per_sample_weights=weight.to(table.dtype), mode="sum")
        return pooled.reshape(-1, self.out_h, self.out_w, channels).permute(0, 3, 1, 2).contiguous()

    def _taps(self, rois: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
              first_row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per output bin, the table rows and weights of its 4 * sampling_ratio^2 taps, as
        torchvision's roi_align (aligned=False) computes them; weights include 1 / count."""
        sr = self.sampling_ratio
        x1, y1, x2, y2 = rois.unbind(1)
        bin_w = (x2 - x1).clamp(min=1.0) / self.out_w
        bin_h = (y2 - y1).clamp(min=1.0) / self.out_h
        step = torch.arange(sr, dtype=rois.dtype, device=rois.device) + 0.5
        # (RoIs, bins along the axis, samples per bin), in roi_align's order of operations
        ys = (y1[:, None, None] + torch.arange(self.out_h, dtype=rois.dtype, device=rois.device)[None, :, None]
              * bin_h[:, None, None] + step[None, None, :] * bin_h[:, None, None] / sr)
        xs = (x1[:, None, None] + torch.arange(self.out_w, dtype=rois.dtype, device=rois.device)[None, :, None]
              * bin_w[:, None, None] + step[None, None, :] * bin_w[:, None, None] / sr)
        y_lo, y_hi, ly, hy, y_in = _axis(ys, h[:, None, None])
        x_lo, x_hi, lx, hx, x_in = _axis(xs, w[:, None, None])

        def along_y(t: torch.Tensor) -> torch.Tensor:  # -> (RoIs, out_h, 1, sr, 1)
            return t[:, :, None, :, None]

        def along_x(t: torch.Tensor) -> torch.Tensor:  # -> (RoIs, 1, out_w, 1, sr)
            return t[:, None, :, None, :]

        row_lo, row_hi = along_y(y_lo) * along_x(w[:, None, None]), along_y(y_hi) * along_x(w[:, None, None])
        base = first_row[:, None, None, None, None]
        index = torch.stack([base + row_lo + along_x(x_lo), base + row_lo + along_x(x_hi),
                             base + row_hi + along_x(x_lo), base + row_hi + along_x(x_hi)], -1)
        weight = torch.stack([along_y(hy) * along_x(hx), along_y(hy) * along_x(lx),
                              along_y(ly) * along_x(hx), along_y(ly) * along_x(lx)], -1)
        inside = (along_y(y_in) & along_x(x_in))[..., None]
        weight = torch.where(inside, weight, 0.0) / (sr * sr)
        taps = 4 * sr * sr
        return index.reshape(-1, taps), weight.reshape(-1, taps)


def _axis(v: torch.Tensor, size: torch.Tensor):
    """roi_align's bilinear set-up along one axis: samples beyond one pixel outside the map
    count zero, the rest are clamped to the map; the low and high neighbours and weights."""
    inside = (v >= -1.0) & (v <= size)
    v = v.clamp(min=0.0)
    lo = v.floor().long()
    at_edge = lo >= size - 1
    lo = torch.where(at_edge, size - 1, lo)
    hi = torch.where(at_edge, size - 1, lo + 1)
    v = torch.where(at_edge, lo.to(v.dtype), v)
    low_weight = v - lo
    return lo, hi, low_weight, 1.0 - low_weight, inside
