"""``python -m orchestrator.cli``: how the local backend starts each trainer process."""

from orchestrator.cli import main

main()
