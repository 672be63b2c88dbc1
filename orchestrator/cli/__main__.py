"""``python -m orchestrator.cli``: how the local backend starts its trainer processes."""

from orchestrator.cli import main

if __name__ == "__main__":
    main()
