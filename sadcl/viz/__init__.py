"""Pictures of what SADCL learns and the measurements behind them.

* :mod:`sadcl.viz.figures`: the pictures (attention maps over an image, the embedding space) and saving them;
* :mod:`sadcl.viz.measure`: the numbers (attention on the object's cell, label-level embeddings, 2-D maps);
* :mod:`sadcl.viz.deps`: the optional dependencies (matplotlib, scikit-learn) and their error.
"""

from __future__ import annotations

from .deps import MissingDependencyError
from .figures import explain, overlay_attention, plot_embeddings, save_figure
from .measure import attention_on_cell, cell_shares, embed_2d, label_embeddings

__all__ = [
    "MissingDependencyError",
    "attention_on_cell",
    "cell_shares",
    "embed_2d",
    "explain",
    "label_embeddings",
    "overlay_attention",
    "plot_embeddings",
    "save_figure",
]
