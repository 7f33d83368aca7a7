"""Developer tools outside the runtime path: the benchmark, synthetic clips, seeded
checkpoints that fire."""
