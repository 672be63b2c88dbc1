"""``python -m orchestrator.cli``: how the local backend starts trainer processes."""

from orchestrator.cli.app import main

main()
