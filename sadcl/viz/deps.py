"""The optional dependencies of :mod:`sadcl.viz`: matplotlib (the ``viz`` extra) and scikit-learn (t-SNE),
imported only when needed, and the one error a missing one raises."""

from __future__ import annotations

from typing import Any

__all__ = ["MissingDependencyError", "load_matplotlib"]


class MissingDependencyError(ImportError, RuntimeError):
    """An optional dependency is not installed. Also a RuntimeError, so ``sadcl`` commands report it in one
    line like any other bad-input error."""


def load_matplotlib() -> Any:
    """Import matplotlib lazily (the ``viz`` extra); the parent package first, so that a blocked or missing
    matplotlib is detected even when one of its submodules is already cached."""
    try:
        import matplotlib
        import matplotlib.colors  # noqa: F401
        import matplotlib.figure  # noqa: F401
        from matplotlib import colormaps  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"sadcl.viz draws with matplotlib, which is not installed ({e}): pip install 'sadcl[viz]'"
        ) from e
    return matplotlib
