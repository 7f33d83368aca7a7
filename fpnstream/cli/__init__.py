"""The `fpnstream` command: parsing (`parser`), `run`, the Redis-facing commands and the
tools; `main` dispatches and turns every error into one line."""
