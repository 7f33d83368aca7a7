"""Analytics after detection: object tracks, zones and lines, events (no Ray, no torch)."""
