"""Bounded per-stream frame queues with a named drop policy, and batches formed by size or
deadline, fairly across streams (FrameMux)."""
