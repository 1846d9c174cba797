"""Package attributes loaded on first use (PEP 562), so that importing a package costs only what is used.

``import sadcl`` must stay light: the command line (``sadcl --version``, ``sadcl list``) and tools that only
read the variant table should not pay for torch and timm.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps a public name to the submodule (relative,
    e.g. ``".zoo.factory"``) that owns it; the first access imports it and caches the value in ``namespace``.

    A submodule is an attribute too (``import sadcl; sadcl.zoo.variants``), as when the package imported its
    submodules eagerly: the first access imports it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")  # the import sets the attribute
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
