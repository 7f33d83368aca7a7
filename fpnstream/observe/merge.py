"""One scrape endpoint for a cluster: the workers' metrics, re-exported with a `worker` label."""

from __future__ import annotations

import threading
from typing import Iterable

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families


class WorkerMetrics:
    """One scrape endpoint for the whole cluster: re-exports each worker's metrics with a
    `worker` label (workers send their exposition text with every status poll)."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, worker: str, text: str) -> None:
        with self._lock:
            self._texts[worker] = text

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            texts = dict(self._texts)
        merged: dict[str, Metric] = {}
        for worker, text in texts.items():
            for fam in text_string_to_metric_families(text):
                out = merged.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
        return list(merged.values())
