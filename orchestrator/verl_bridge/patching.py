"""The two mechanisms every patch of ``orchestrator.verl_bridge.patches`` goes through.

- ``after_import(name, callback)``: run a callback right after a module executes, without importing it early
  (verl's heavy modules). A callback that raises makes the import itself raise, and stays armed: the next
  import of that module runs it again (and raises again) instead of quietly giving an unpatched module.
- ``wrap(owner, attr, make_wrapper, marker)``: replace ``owner.attr`` by a wrapper of it, once. The wrapper gets
  the original's metadata (``functools.update_wrapper``: name, docstring, verl's dispatch attributes,
  ``__wrapped__``) and a marker attribute, so that installing it again is a no-op. ``wrapper_factory`` turns
  a ``make(original) -> wrapper`` function into such an idempotent, marking factory.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from typing import Any, Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:  # not installed: the import fails as usual; stay armed
            sys.meta_path.insert(0, self)
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            try:
                self.callback(module)
            except BaseException:
                sys.meta_path.insert(0, self)  # the failed import is forgotten; the next one raises again
                raise

        spec.loader.exec_module = exec_and_patch
        return spec


def after_import(name: str, callback: Callable) -> None:
    """Call ``callback(module)`` once ``name`` is imported (now, if it already is). Idempotent per pair."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
    elif not any(isinstance(f, _AfterImport) and f.name == name and f.callback is callback for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))


def pending_imports() -> set[str]:
    """The module names that still have an ``after_import`` callback waiting (for ``maspo doctor``)."""
    return {f.name for f in sys.meta_path if isinstance(f, _AfterImport)}


def marked(original: Any, make_wrapper: Callable[[Any], Any], marker: str, *, metadata: bool = True) -> Any:
    """``make_wrapper(original)``, marked with ``marker``; ``original`` itself if it already carries the marker.

    ``metadata``: copy the original's metadata onto the wrapper (``functools.update_wrapper``); off for wrappers
    that are not functions (a proxy object, a function standing in for a class), which only get ``__wrapped__``.
    """
    if getattr(original, marker, False):
        return original
    wrapper = make_wrapper(original)
    if metadata:
        functools.update_wrapper(wrapper, original)
    else:
        wrapper.__wrapped__ = original
    setattr(wrapper, marker, True)
    return wrapper


def wrapper_factory(marker: str, *, metadata: bool = True):
    """Decorate ``make(original, *args) -> wrapper`` into an idempotent factory that marks what it makes."""

    def decorate(make: Callable) -> Callable:
        @functools.wraps(make)
        def factory(original, *args, **kwargs):
            return marked(original, lambda o: make(o, *args, **kwargs), marker, metadata=metadata)

        factory.marker = marker
        factory.metadata = metadata
        return factory

    return decorate


def wrap(owner: Any, attr: str, make_wrapper: Callable[[Any], Any], marker: str | None = None, *,
         metadata: bool | None = None) -> bool:
    """Replace ``owner.attr`` by ``make_wrapper(owner.attr)`` unless it is already marked; whether it changed.

    ``make_wrapper`` is a ``wrapper_factory`` (its marker and metadata setting are used) or a plain
    ``make(original) -> wrapper`` with an explicit ``marker``.
    """
    original = getattr(owner, attr)
    if hasattr(make_wrapper, "marker"):  # a wrapper_factory: it checks and sets its own marker
        wrapper = make_wrapper(original)
    elif not marker:
        raise ValueError(f"wrap(..., {attr!r}, ...): a plain make_wrapper needs a marker")
    else:
        wrapper = marked(original, make_wrapper, marker, metadata=True if metadata is None else metadata)
    if wrapper is original:
        return False
    setattr(owner, attr, wrapper)
    return True
