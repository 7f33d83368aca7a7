"""Helpers of the fault tests: figures for the README's fault table (test-artifacts/faults.jsonl),
and reading a run's health and metrics endpoints."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.conftest import REPO


def longest_pause_s(client, key: str) -> float:
    """The longest a consumer waited between two entries (entry ids carry the publish time)."""
    ms = [int(i.split(b"-")[0]) for i, _ in client.xrange(key)]
    return max((b - a for a, b in zip(ms, ms[1:])), default=0) / 1000.0


def record(fault: str, **figures) -> None:
    """Measured outcomes for the README's fault table: test-artifacts/faults.jsonl."""
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    with open(out / "faults.jsonl", "a") as f:
        f.write(json.dumps({"fault": fault, **figures}) + "\n")


def exactly_once(frames: list[int], n: int) -> dict:
    return {"frames": n, "published": len(frames), "lost": len(set(range(n)) - set(frames)),
            "duplicated": len(frames) - len(set(frames))}


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def metric(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{"))
