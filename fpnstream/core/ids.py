"""Stream ids: the one pattern every part checks them against (config, `ID=URI` arguments,
the preview's URLs). Safe in Redis keys, metric labels and file names."""

STREAM_ID = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
