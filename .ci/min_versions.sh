#!/usr/bin/env bash
# The light dependencies at the floors pyproject.toml declares: timm, huggingface_hub, safetensors, pillow are
# installed at exactly `name==floor` into a virtual environment that sees everything else of this machine
# (torch, the editable sadcl), then the fast tests and the Hub tests run against them (`-m "not slow"`), and
# tests/test_lifecycle.py (train, export, push, load through sadcl and timm).
#
#   .ci/min_versions.sh                      # the declared floors
#   .ci/min_versions.sh "timm==1.0.12"       # try a candidate floor (overrides that package's pin)
#
# The environment lives in $SADCL_MIN_VENV (default: a fresh temporary folder, removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# name==floor for each light dependency, read from pyproject.toml (the one place the floors are written).
mapfile -t pins < <(python3 - "$@" <<'EOF'
import re
import sys
from pathlib import Path

LIGHT = ("timm", "huggingface_hub", "safetensors", "pillow")
deps = re.search(r"^dependencies = \[(.*?)^\]", Path("pyproject.toml").read_text(), re.S | re.M).group(1)
pins = {}
for name in LIGHT:
    floor = re.search(rf'"{name}>=([^",;]+)', deps)
    if floor is None:
        sys.exit(f"min_versions: pyproject.toml declares no floor for {name} (want {name}>=X)")
    pins[name] = f"{name}=={floor.group(1)}"
for override in sys.argv[1:]:
    name = re.split(r"[=<>!~]", override)[0]
    if name not in pins:
        sys.exit(f"min_versions: {override!r} is not one of {', '.join(LIGHT)}")
    pins[name] = override
print("\n".join(pins.values()))
EOF
)

venv="${SADCL_MIN_VENV:-}"
if [ -z "$venv" ]; then
  venv="$(mktemp -d)/venv"
  trap 'rm -rf "$(dirname "$venv")"' EXIT
fi
python3 -m venv --system-site-packages "$venv"
echo "min_versions: installing ${pins[*]}"
"$venv/bin/python" -m pip install -q "${pins[@]}"
"$venv/bin/python" - "${pins[@]}" <<'EOF'
import importlib.metadata as md
import sys

from packaging.version import Version

for pin in sys.argv[1:]:  # the environment really holds the pinned versions (not the machine's newer ones)
    name, version = pin.split("==")
    assert Version(md.version(name)) == Version(version), f"{name}: {md.version(name)} installed, {version} wanted"
print("min_versions: running the tests with", ", ".join(sys.argv[1:]))
EOF
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" tests
# The whole journey through timm (`hf-hub:`, `local-dir:`) and the Hub, slow but where the floors show.
"$venv/bin/python" -m pytest -q -p no:cacheprovider -m "" tests/test_lifecycle.py
