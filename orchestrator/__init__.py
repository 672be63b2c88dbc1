"""The control plane of early-repair: specs, backends, manifests, store, aggregation.

Never imports torch, so the CLI starts fast and install-light paths work.
"""

__version__ = "0.1.0"
