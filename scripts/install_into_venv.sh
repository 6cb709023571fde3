#!/usr/bin/env bash
# Builds c2rope against a lane venv's own torch and installs it into that venv only:
#
#   scripts/install_into_venv.sh /path/to/venv
#
# The build starts from a clean copy of this checkout's sources, without the in-place
# extension (.so) and __pycache__ folders the main lane's build leaves there: an in-place
# .so built for another torch would be packaged as is. The venv must already hold torch
# and the build requirements (no build isolation: the extension compiles against the
# venv's torch, not one pip would fetch). Used by the vLLM and LLaMA-Factory lanes.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 VENV (a venv with torch installed)" >&2; exit 2; }
[ -x "$1/bin/python" ] || { echo "$0: $1/bin/python does not exist" >&2; exit 2; }
VENV=$(cd "$1" && pwd)  # absolute: the build runs from the checkout's root
cd "$(dirname "$0")/.."

src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r c2rope csrc setup.py pyproject.toml MANIFEST.in README.md "$src"/
find "$src" \( -name '*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
"$VENV/bin/python" -m pip install -q --no-build-isolation --force-reinstall --no-deps "$src"
