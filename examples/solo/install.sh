#!/usr/bin/env bash
# Installs solo-learn's main branch beside sgcl_plugin into the active Python environment, so that
# `from sgcl_plugin.adapters.solo import register` works. See docs/adapters/solo.md.
#
#   bash examples/solo/install.sh [SOLO_LEARN_DIR]    # default: $SOLO_LEARN_DIR, else ./solo-learn
#
# Clones https://github.com/vturrisi/solo-learn into that folder when it does not exist (solo-learn
# main is not on PyPI). Run it in the venv you train in, with torch already installed (the build you
# want); PYTHON=... picks another interpreter. It installs:
#   1. setuptools >= 77.0.3 and < 81: torch 2.6+ requires >= 77.0.3, and lightning 2.1.2 (solo's pin)
#      and solo's setup.py import pkg_resources, which setuptools 81 and later no longer ship;
#   2. solo-learn from the clone, editable, built with that setuptools (--no-build-isolation, and
#      --use-pep517 on pips older than 25: an isolated build would fetch the newest setuptools and
#      fail on pkg_resources);
#   3. sgcl_plugin from this repository, editable;
# and each pip call repeats the setuptools pin, so that no later resolution raises it again. It ends
# by registering the three SGCL methods into solo's registry, which fails loudly if anything is off.
set -euo pipefail

PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SOLO=${1:-${SOLO_LEARN_DIR:-solo-learn}}
SETUPTOOLS='setuptools>=77.0.3,<81'

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "install.sh: torch is not importable with $PYTHON; install the torch build you want first" \
        "(for example: $PYTHON -m pip install torch torchvision)." >&2
    exit 2
fi
if [ ! -d "$SOLO" ]; then
    echo "install.sh: cloning solo-learn main into $SOLO"
    git clone --depth 1 https://github.com/vturrisi/solo-learn "$SOLO"
fi
if [ ! -f "$SOLO/setup.py" ] || [ ! -d "$SOLO/solo" ]; then
    echo "install.sh: $SOLO is not a solo-learn clone (no setup.py and solo/ there)." >&2
    exit 2
fi

"$PYTHON" -m pip install "$SETUPTOOLS" wheel
# pip < 25 builds a project without pyproject.toml by `setup.py develop`, which setuptools 80 hands to
# an isolated pip build (and pkg_resources is gone there): --use-pep517 makes it build in this env.
# Newer pips always do, and no longer know the option.
PEP517=()
if "$PYTHON" -m pip install --help | grep -q -- "--use-pep517"; then PEP517=(--use-pep517); fi
"$PYTHON" -m pip install --no-build-isolation ${PEP517[@]+"${PEP517[@]}"} -e "$SOLO" "$SETUPTOOLS"  # bash 3.2-safe
"$PYTHON" -m pip install -e "$ROOT" "$SETUPTOOLS"
"$PYTHON" - <<'EOF'
import lightning, solo, torch
from sgcl_plugin.adapters.solo import register

print(f"solo-learn {getattr(solo, '__version__', 'main')} with lightning {lightning.__version__} and torch {torch.__version__}:",
      "registered", sorted(register()))
EOF
