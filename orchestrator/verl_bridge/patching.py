"""Run a callback right after a module executes, without importing it early (verl's heavy modules)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            self.callback(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def after_import(name: str, callback: Callable) -> None:
    """Call ``callback(module)`` once ``name`` is imported (now, if it already is). Idempotent per pair."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
    elif not any(isinstance(f, _AfterImport) and f.name == name and f.callback is callback for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))
