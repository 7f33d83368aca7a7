"""`fpnstream bench`'s report: the Markdown table and the bar chart of one bench run."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def markdown(doc: dict) -> str:
    i = doc["input"]
    lines = [
        f"{i['clips']} clips x {i['frames_per_clip']} frames, {i['size']}, `{i['model']}`, batch {i['batch']}, "
        f"fast mode {doc.get('fast_mode') or 'none'}, "
        f"device {doc['device']}, torch {doc['versions']['torch']}, torchvision {doc['versions']['torchvision']}",
        "",
        "| run | frames | frames/s | x baseline | latency p50 / p95 / p99 ms | stage ms per frame | GFLOP/s (share of peak) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lat = " / ".join(str(r["latency_ms"].get(k, "-")) for k in ("p50", "p95", "p99"))
        stages = ", ".join(f"{k} {v}" for k, v in r["stage_ms"].items()) or "-"
        lines.append(f"| {r['name']} | {r['frames']} | {r['fps']:.2f} | {r['ratio']:.2f} | {lat} | {stages} | "
                     f"{r['achieved_gflops_s']} ({r['fraction_of_peak'] * 100:.1f} %) |")
    acc = doc.get("accuracy")
    if acc:
        lines += ["", f"Accuracy of {doc.get('fast_mode') or acc['precision']} against fp32 eager "
                  f"on {acc['frames']} frames: {acc['matched_iou_0.9_same_label']} of {acc['fp32_detections']} fp32 "
                  f"detections matched (IoU >= 0.9, same label) = {acc['rate'] * 100:.1f} %, {acc.get('extra', 0)} extra "
                  f"({'passes' if acc['passed'] else 'FAILS'} the {acc['required'] * 100:.0f} % bar)"]
    ops = ", ".join(f"{k} {v}" for k, v in (doc.get("gflops_by_op") or {}).items())
    lines += ["", f"GFLOPs per frame: {doc['gflops_per_frame']} ({ops}) from {doc['gflops_source']}; peak: "
              f"{doc['peak_flops_measured'] / 1e9:.1f} GFLOP/s measured with a 2048x2048 fp32 matmul on the same device"
              + (f" (the same matmul in {acc['precision']}: {doc['peak_flops_measured_low_precision'] / 1e9:.1f} "
                 "GFLOP/s; a mode with low-precision layers can pass 100 % of the fp32 peak)."
                 if doc.get("peak_flops_measured_low_precision") and acc else "."),
              "Timing: the baseline from its first decode to its last result; the pipelines from the first "
              "frame's capture to the last publish (start-up, model load and Ray workers excluded for all).",
              "Baseline latency is decode + inference of one frame; pipeline latency is capture -> publish, "
              "which for files read as fast as possible includes time queued behind earlier frames (files never "
              "drop). The paced run plays the clips at their recorded rate at the stated share of the in-process "
              "throughput, like cameras: its latency is what a frame sees when the pipeline keeps up; its x baseline "
              "is not a speed-up (the rate is set)."]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no plot")
        return
    names = [r["name"] for r in doc["results"]]
    fps = [r["fps"] for r in doc["results"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.barh(names, fps, color=["#999", "#3a7", "#37a"][: len(names)])
    for bar, r in zip(bars, doc["results"]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r['fps']:.1f} fps ({r['ratio']:.2f}x)", va="center")
    ax.set_xlabel("frames/s")
    i = doc["input"]
    ax.set_title(f"{i['model']}, {i['size']}, {i['clips']} clips, {doc['device']}", fontsize=9)
    ax.set_xlim(0, max(fps) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
