"""``timm.create_model("sadcl_coco_448")`` after ``import sadcl``, without ``import sadcl`` importing timm.

:mod:`sadcl.zoo.factory` registers every variant with timm when it is imported, and importing it costs torch
and timm (seconds). ``import sadcl`` therefore does not import it; instead :func:`register_when_timm_loads`
(called at the end of ``import sadcl``) makes the registration happen as soon as both are true:

* timm is fully imported (whoever imported it: the user, or sadcl itself), and
* no ``sadcl`` module is half-way through its own import (the factory imports several of them; importing it
  from inside, e.g., ``sadcl.model``'s import of timm would meet a half-initialised module).

If timm is already imported, that is now. Otherwise a finder on ``sys.meta_path`` watches the imports of
``timm`` and of ``sadcl.*`` modules and checks again as each one finishes; it removes itself once the factory
is imported (the factory registers the variants itself, so its import ends the watch either way).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

FACTORY = "sadcl.zoo.factory"
# Loaders made for one module each (their instances can be wrapped without touching other modules).
_PER_MODULE_LOADERS = (
    importlib.machinery.SourceFileLoader,
    importlib.machinery.SourcelessFileLoader,
    importlib.machinery.ExtensionFileLoader,
)


def _initializing(module: object) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _ready(finished: str | None = None) -> bool:
    """timm is imported and no sadcl module (other than ``finished``, whose import just ended) is importing."""
    timm = sys.modules.get("timm")
    if timm is None or (_initializing(timm) and finished != "timm"):
        return False
    return not any(
        _initializing(m)
        for name, m in list(sys.modules.items())
        if name != finished and (name == "sadcl" or name.startswith("sadcl."))
    )


class _Watch(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader of ``timm`` and ``sadcl.*`` modules to check after each import."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> Any:
        if fullname != "timm" and not fullname.startswith("sadcl."):
            return None
        if fullname == FACTORY:  # it registers the variants: nothing left to watch for
            _stop_watching()
            return None
        spec = _find_after(self, fullname, path, target)
        loader = getattr(spec, "loader", None)
        # Only per-module loader instances are wrapped (a zipimporter is shared by every module of its archive).
        if isinstance(loader, _PER_MODULE_LOADERS) and not hasattr(loader, "_sadcl_wrapped"):
            run = loader.exec_module

            def exec_module(module: ModuleType) -> None:
                run(module)
                if _ready(finished=fullname):
                    _register()

            loader.exec_module = exec_module  # type: ignore[method-assign]
            loader._sadcl_wrapped = True  # type: ignore[attr-defined]
        return spec


def _find_after(watch: _Watch, fullname: str, path: Sequence[str] | None, target: ModuleType | None) -> Any:
    """The spec the finders after ``watch`` on ``sys.meta_path`` give (None: the import system goes on)."""
    finders = list(sys.meta_path)
    for finder in finders[finders.index(watch) + 1 :] if watch in finders else ():
        find = getattr(finder, "find_spec", None)
        spec = find(fullname, path, target) if find is not None else None
        if spec is not None:
            return spec
    return None


_WATCH = _Watch()


def _stop_watching() -> None:
    if _WATCH in sys.meta_path:
        sys.meta_path.remove(_WATCH)


def _register() -> None:
    _stop_watching()
    if FACTORY in sys.modules:
        return
    try:
        importlib.import_module(FACTORY)  # its import registers every variant with timm
    except Exception as e:  # noqa: BLE001  a broken sadcl must not break `import timm` (or `import sadcl`)
        # create_model raises the same error, in full, when it is used.
        warnings.warn(f"sadcl could not register its models with timm: {type(e).__name__}: {e}", stacklevel=2)


def register_when_timm_loads() -> None:
    """Register the variants with timm now if timm is imported, else as soon as it is (see the module doc).

    Called last in ``sadcl/__init__.py``: the package itself is still importing, everything it defines is there."""
    if FACTORY in sys.modules:
        return
    if _ready(finished="sadcl"):
        _register()
    elif _WATCH not in sys.meta_path:
        sys.meta_path.insert(0, _WATCH)
