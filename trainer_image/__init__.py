"""The data plane: what runs inside the trainer image (and in local runs).

guard -> data -> train -> target split -> repair -> metrics -> store. It imports
``orchestrator.spec``, ``orchestrator.store``, ``orchestrator.results`` and
``orchestrator.errors`` only - never the CLI or the backends.
"""
