"""``python -m orchestrator.cli`` is ``maspo``."""

from orchestrator.cli import main

main()
