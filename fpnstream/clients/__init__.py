"""Programs that read what a job published: the consumer API (`tail` uses it), annotate,
the preview page. They depend on publish/ (keys, schema), never on the runtime."""
