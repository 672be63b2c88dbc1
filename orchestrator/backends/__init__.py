"""Backends run a sweep somewhere: ``local`` (processes) or ``kubernetes`` (Indexed Jobs)."""
