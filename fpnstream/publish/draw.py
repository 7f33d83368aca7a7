"""Boxes, names and scores drawn onto frames: shared by `annotate` and `preview`."""

from __future__ import annotations

import io
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours; a label keeps its colour across frames and streams.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40),
)


def color_for(label: int) -> tuple[int, int, int]:
    return _PALETTE[label % len(_PALETTE)]


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def draw_detections(image: np.ndarray | Image.Image, detections: Iterable[Mapping], scale: float = 1.0,
                    line_width: int = 2, trails: Mapping[int, Sequence[tuple[float, float]]] | None = None,
                    ) -> Image.Image:
    """Draw schema-v1 detections ({"box", "score", "label", "name", "track_id"}) onto a copy
    of `image`; a tracked detection is labelled #id and coloured by its track.

    `scale` maps box coordinates (in the frame's original pixels) onto this image, for
    snapshots that were scaled down. `trails`: recent anchor points per track id, drawn as
    a polyline behind each tracked box."""
    img = (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("RGB").copy()
    draw = ImageDraw.Draw(img)
    font = _font()
    for tid, points in (trails or {}).items():
        if len(points) > 1:
            draw.line([(x * scale, y * scale) for x, y in points], fill=color_for(int(tid) + 7), width=line_width)
    for det in detections:
        x1, y1, x2, y2 = (float(v) * scale for v in det["box"])
        tid = det.get("track_id")
        colour = color_for(int(det.get("label", 0)) if tid is None else int(tid) + 7)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_width)
        text = f"{det.get('name') or det.get('label')} {float(det.get('score', 0.0)):.2f}"
        if tid is not None:
            text = f"#{tid} {text}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1  # above the box, or inside it at the top edge
        draw.rectangle((x1, ty, x1 + tw + 4, ty + th + 4), fill=colour)
        draw.text((x1 + 2, ty + 2 - top), text, fill=(0, 0, 0), font=font)
    return img


_ZONE, _LINE = (80, 200, 255), (255, 200, 40)


def draw_overlay(img: Image.Image, overlay: Mapping, scale: float = 1.0, line_width: int = 2) -> Image.Image:
    """Zones (outlined, with how many tracks are inside) and lines (with a tick on their
    `in` side and the crossings each way) of `StreamAnalytics.overlay`, onto `img` itself."""
    draw = ImageDraw.Draw(img)
    font = _font()

    def label(xy: tuple[float, float], text: str, colour) -> None:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x, y = xy
        draw.rectangle((x, y, x + right - left + 4, y + bottom - top + 4), fill=colour)
        draw.text((x + 2, y + 2 - top), text, fill=(0, 0, 0), font=font)

    for zone in overlay.get("zones", ()):
        points = [(float(x) * scale, float(y) * scale) for x, y in zone["polygon"]]
        draw.polygon(points, outline=_ZONE, width=line_width)
        label(min(points, key=lambda p: (p[1], p[0])), f"{zone['name']}: {zone['inside']} inside", _ZONE)
    for line in overlay.get("lines", ()):
        (x1, y1), (x2, y2) = ((float(x) * scale, float(y) * scale) for x, y in (line["start"], line["end"]))
        draw.line((x1, y1, x2, y2), fill=_LINE, width=line_width + 1)
        # the `in` side is the right-hand side looking from start to end: a short tick there
        mx, my, dx, dy = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        norm = max(1e-6, (dx * dx + dy * dy) ** 0.5)
        draw.line((mx, my, mx - dy / norm * 10, my + dx / norm * 10), fill=_LINE, width=line_width + 1)
        label((mx + 4, my + 4), f"{line['name']}: in {line['in']} / out {line['out']}", _LINE)
    return img


def to_jpeg(img: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def contact_sheet(images: Sequence[Image.Image], columns: int = 3, tile_width: int = 320,
                  captions: Sequence[str] | None = None) -> Image.Image:
    """A grid of scaled-down frames, each with an optional caption above it."""
    if not images:
        raise ValueError("no frames for a contact sheet")
    columns = max(1, min(columns, len(images)))
    tiles = []
    for img in images:
        h = max(1, round(img.height * tile_width / img.width))
        tiles.append(img.resize((tile_width, h), Image.BILINEAR))
    caption_h = 14 if captions else 0
    tile_h = max(t.height for t in tiles) + caption_h
    rows = (len(tiles) + columns - 1) // columns
    pad = 4
    sheet = Image.new("RGB", (columns * (tile_width + pad) + pad, rows * (tile_h + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for i, tile in enumerate(tiles):
        x = pad + (i % columns) * (tile_width + pad)
        y = pad + (i // columns) * (tile_h + pad)
        if captions:
            draw.text((x, y), captions[i], fill=(230, 230, 230), font=font)
        sheet.paste(tile, (x, y + caption_h))
    return sheet
