"""The engine and its pieces (sources supervisor, stream ledger, freshness, publisher), the
stream worker, worker pools, and the coordinator whose rules run over any pool."""
