"""The package layout ARCHITECTURE.md describes: imports point one way, modules stay small, the public names
of sadcl.train and sadcl.viz resolve, and `import sadcl` does not load the training loop."""

from __future__ import annotations

import ast
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import sadcl.train
import sadcl.viz

PACKAGE = Path(sadcl.__file__).parent


def _imports(path: Path) -> set[str]:
    """``sadcl`` modules imported by ``path``, at module level or lazily inside functions (a lazy import is
    still a dependency)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1]  # a module's package; an __init__'s package is its own folder, also parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("sadcl"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sadcl"))
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize(
    "folder, forbidden",
    [
        ("model", ("sadcl.train", "sadcl.zoo", "sadcl.data", "sadcl.viz", "sadcl.cli", "sadcl.inference")),
        ("data", ("sadcl.train", "sadcl.zoo", "sadcl.model", "sadcl.viz", "sadcl.cli", "sadcl.inference")),
        ("zoo", ("sadcl.train", "sadcl.viz", "sadcl.cli", "sadcl.inference")),
        ("train", ("sadcl.viz", "sadcl.cli", "sadcl.inference")),
        ("viz", ("sadcl.train", "sadcl.zoo", "sadcl.cli")),
        ("reproduce", ("sadcl.cli", "sadcl.viz")),
        ("tagging", ("sadcl.cli", "sadcl.train", "sadcl.viz")),
    ],
)
def test_imports_point_one_way(folder, forbidden):
    bad = {f"{path.name}: {name}" for path in _modules(folder) for name in _imports(path) if name.startswith(forbidden)}
    assert not bad, f"{folder}/ imports upward: {sorted(bad)}"


def test_only_the_command_line_imports_the_tagging_job():
    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "tagging" not in p.parts}
    users = {u for u in users if any(n.startswith("sadcl.tagging") for n in _imports(PACKAGE / u))}
    assert users == {"cli.py"}, users


def test_viz_measurements_do_not_import_the_figures():
    assert not any(n.startswith("sadcl.viz.figures") for n in _imports(PACKAGE / "viz" / "measure.py"))


def _statements(path: Path) -> int:
    """Logical lines (statements), which do not change when the formatter wraps a long call over several lines."""
    with path.open("rb") as f:
        return sum(1 for token in tokenize.tokenize(f.readline) if token.type == tokenize.NEWLINE)


@pytest.mark.parametrize("folder", ["train", "viz"])
def test_modules_stay_small(folder):
    sizes = {p.name: _statements(p) for p in _modules(folder)}
    assert max(sizes.values()) <= 370, sizes


def test_the_training_loop_has_no_catch_all_module():
    assert not (PACKAGE / "train" / "loop.py").exists()
    assert not (PACKAGE / "viz.py").exists()


def test_public_names_resolve():
    for name in sadcl.train.__all__:
        assert getattr(sadcl.train, name) is not None, name
    for name in sadcl.viz.__all__:
        assert callable(getattr(sadcl.viz, name)), name
    with pytest.raises(AttributeError, match="no attribute 'Trainerr'"):
        sadcl.train.Trainerr  # noqa: B018
    # one object per name: the package's names are the owning modules' own
    from sadcl.train.trainer import Trainer

    assert sadcl.train.Trainer is Trainer


def test_import_sadcl_does_not_load_the_training_loop():
    code = (
        "import sys, sadcl; loaded = [m for m in ('sadcl.train.trainer', 'sadcl.train.config', "
        "'sadcl.train.evaluation') if m in sys.modules]; print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
