"""Reconnect policy for live sources: exponential backoff with jitter. Kept out of the
decoder, which only knows how to read one connection."""

from __future__ import annotations

import random
from typing import Callable


class Backoff:
    def __init__(self, base_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        self._base, self._max, self._rng = base_s, max_s, rng
        self.attempt = 0

    def next_delay(self) -> float:
        """Delays grow 2x per failed attempt up to `max_s`; "equal jitter" keeps them in
        [d/2, d] so a fleet of cameras that dropped together does not reconnect in lockstep."""
        d = min(self._max, self._base * (2 ** self.attempt))
        self.attempt += 1
        return d * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self.attempt = 0
