"""A quick command line: `import sadcl`, `sadcl --version` and `sadcl list` / `info` do not import torch or timm;
the public names still load on first use and timm still finds the variants after `import sadcl`."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sadcl

HEAVY = ("torch", "timm", "huggingface_hub", "torchvision", "safetensors")


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (the only way to see what an import loads) and return its stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_light_commands_do_not_import_torch():
    argvs = [["--version"], ["-h"], ["list"], ["list", "--json"], ["info", "sadcl_coco_448"]]
    code = (
        "import contextlib, io, sys\nfrom sadcl.cli import main\ncodes = []\n"
        f"for argv in {argvs!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n            codes.append(main(argv))\n"
        "        except SystemExit as e:\n            codes.append(e.code)\n"
        f"print(codes, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert _run(code) == "[0, 0, 0, 0, 0] []"


def test_submodules_are_attributes_as_before():
    # `import sadcl` used to import its subpackages; reaching them as attributes still works, on first use
    out = _run(
        "import sys, sadcl\n"
        "print(sadcl.zoo.variants.__name__, sadcl.data.preprocessing.__name__, 'sadcl.zoo.factory' in sys.modules)"
    )
    assert out == "sadcl.zoo.variants sadcl.data.preprocessing False"
    assert not hasattr(sadcl, "no_such_module") and not hasattr(sadcl.zoo, "_private")


@pytest.mark.slow  # a fresh interpreter
def test_import_sadcl_is_light_and_public_names_load_on_first_use():
    out = _run(
        "import sys, sadcl\n"
        f"before = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "from sadcl import create_model, predict, SADCL, MemoryBank\n"
        "print(before, 'torch' in sys.modules, create_model.__module__, predict.__module__, SADCL.__module__)"
    )
    assert out == "[] True sadcl.zoo.factory sadcl.inference sadcl.model.sadcl"


def test_every_public_name_resolves_to_its_owner():
    for name in sadcl.__all__:
        assert getattr(sadcl, name) is not None, name
    assert set(sadcl.__all__) <= set(dir(sadcl))
    from sadcl.zoo.factory import create_model

    assert sadcl.create_model is create_model and sadcl.zoo.create_model is create_model
    with pytest.raises(AttributeError, match="no attribute 'create_modle'"):
        sadcl.create_modle  # noqa: B018
    with pytest.raises(ImportError):
        from sadcl import create_modle  # noqa: F401


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize(
    "imports",
    [
        "import sadcl; import timm",  # the hook registers when timm's import ends
        "import timm; import sadcl",  # timm already there: registered at `import sadcl`
        "import sadcl.model; import timm",  # sadcl's own import of timm: registered once sadcl.model is complete
    ],
)
def test_timm_finds_the_variants_after_import_sadcl(imports):
    out = _run(
        f"{imports}\nimport sys\n"
        "m = timm.create_model('sadcl_tiny', num_classes=3)\n"
        "hooked = any(type(f).__module__ == 'sadcl._timm_registration' for f in sys.meta_path)\n"
        "print(type(m).__name__, m.num_classes, hooked)"
    )
    assert out == "SADCL 3 False"


@pytest.mark.slow  # a fresh interpreter importing timm
def test_a_failed_registration_warns_and_never_breaks_import_timm():
    out = _run(
        "import warnings, sys, sadcl, sadcl._timm_registration as reg\n"
        "reg.FACTORY = 'sadcl.zoo.no_such_module'  # stands for a factory whose import fails\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import timm\n"
        "print('timm' in sys.modules, [str(w.message) for w in caught if 'sadcl' in str(w.message)])"
    )
    assert out.startswith('True ["sadcl could not register its models with timm: ModuleNotFoundError: ')
