"""Local (CPU, no hub) building blocks: a tiny random Qwen2 model built offline."""

from orchestrator.local.tiny_model import build_tiny_model

__all__ = ["build_tiny_model"]
