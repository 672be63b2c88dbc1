"""The local backend: a sweep's runs as trainer processes on this machine (``backend``),
with a live progress display (``display``)."""
