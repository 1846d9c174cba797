"""Skip markers for what a test needs beyond the package and its required dependencies, each with the
reason it gives when absent.

A test that needs one of these is skipped with that reason, never passed without checking anything.
"""

from __future__ import annotations

import importlib.util

import pytest

from sadcl.data import mosaic


def _has_fashion_mnist() -> bool:
    root = mosaic._root(None)  # where load_fashion_mnist looks: $SADCL_FASHION_MNIST or Debian's folder
    return all(any(root.glob(f"{stem}*")) for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"))


fashion_mnist = pytest.mark.skipif(
    not _has_fashion_mnist(),
    reason="needs Fashion-MNIST: apt-get install dataset-fashion-mnist (Debian/Ubuntu), or set SADCL_FASHION_MNIST",
)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


matplotlib = pytest.mark.skipif(
    not _installed("matplotlib"), reason="needs matplotlib, the viz extra: pip install 'sadcl[viz]'"
)
sklearn = pytest.mark.skipif(not _installed("sklearn"), reason="needs scikit-learn: pip install 'sadcl[test]'")
onnx = pytest.mark.skipif(
    not (_installed("onnx") and _installed("onnxruntime")), reason="needs the onnx extra: pip install 'sadcl[onnx]'"
)
