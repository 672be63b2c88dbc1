"""The Kubernetes backend: pure rendering of a sweep into objects (``manifests``), Job and
Pod states mapped to run states (``state``), and the thin I/O layer (``backend``)."""
