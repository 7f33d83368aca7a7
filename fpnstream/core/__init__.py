"""Types every stage shares and that depend on nothing else of fpnstream: frames and
detections, stream states and reports, errors, redaction, backoff, hang rule, failpoints."""
