"""Prometheus: the pipeline's metrics (an observer of the engine), the coordinator's,
the HTTP endpoint with /healthz and /readyz, and merging workers' metrics on a cluster."""
