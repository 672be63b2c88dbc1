"""The ``early-repair`` command line: parse, call, render - nothing else lives here.

Machine-readable output goes to stdout, logs and progress to stderr. Our errors become one
line on stderr and their exit code (0 ok, 1 a run failed, 2 bad input); heavy modules
(torch, boto3, kubernetes) are imported inside the commands that need them so that
``early-repair --help`` stays fast and torch-free. One module per command group:
``local`` (run, trainer), ``cluster`` (plan, submit, status, logs, cancel), ``analysis``
(aggregate), ``data`` (prepare, schema); ``app`` holds the Typer app and ``main``.
"""

from orchestrator.cli import analysis, cluster, data, local  # noqa: F401  (registers commands)
from orchestrator.cli.app import app, main

__all__ = ["app", "main"]
