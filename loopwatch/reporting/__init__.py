"""Where stalls go: spans, metrics, log records and the user's ``on_block`` hook."""
