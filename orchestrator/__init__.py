"""maspo: an experiment orchestrator for RLVR on LLMs (MASPO and its baselines on verl)."""

__version__ = "0.1.0"
