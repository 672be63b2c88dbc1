"""Small helpers the control plane and the trainer share: durable file writes, retries.

The lowest layer: it imports nothing of early-repair, so every package - the trainer
included - may use it.
"""
