"""Everything written to Redis: key names, the entry schema, the fenced exactly-once sink,
the outage buffer and spool, status hashes, control commands, preview snapshots."""
