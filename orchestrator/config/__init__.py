"""Typed configuration, validated once at the edge: trials and profiles (``trial``), sweep and comparison
specs (``experiment``), the plan a command decides (``plan``)."""
