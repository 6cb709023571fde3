#!/usr/bin/env bash
# CI lane: c2rope inside LLaMA-Factory's SFT workflow (tests/test_llamafactory.py), in a venv
# of its own: llamafactory 0.9.5 pins an older transformers (5.6.0) and imports torchaudio
# (its mm_plugin) and torchvision (transformers' image processors), and PyPI's torchvision
# does not import beside the main lane's CPU torch 2.13 ("operator torchvision::nms does
# not exist"). So this venv has torch 2.14.1 + torchvision 0.29.1 (the pair that imports
# here; on this CI machine pip takes both from local disk), torchaudio 2.11.1 without its
# torch pin (it imports beside 2.14.1: LLaMA-Factory only imports it here), and c2rope
# built against that torch from a copy of this checkout, installed into this venv only.
#
#   scripts/llamafactory_lane.sh        # venv .venv-llamafactory beside the checkout
#
# The tests run from a scratch folder so that the venv's c2rope (built for torch 2.14.1)
# is imported, not the checkout's in-place build (for the main lane's torch).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY="${PYTHON:-python3}"
VENV="${LLAMAFACTORY_VENV:-.venv-llamafactory}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac  # absolute: the tests run from a scratch folder
TORCH=2.14.1 TORCHVISION=0.29.1 TORCHAUDIO=2.11.1 LLAMAFACTORY=0.9.5
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pins=("torch==$TORCH" "torchvision==$TORCHVISION")
"$VENV/bin/python" -m pip install -q "${pins[@]}"
"$VENV/bin/python" -m pip install -q --no-deps "torchaudio==$TORCHAUDIO"
"$VENV/bin/python" -m pip install -q "llamafactory==$LLAMAFACTORY" "${pins[@]}" pytest ninja "setuptools>=77"

# c2rope against this venv's torch, from a clean copy (no in-place .so of the main lane's build)
bash scripts/install_into_venv.sh "$VENV"

scratch=$(mktemp -d)
cd "$scratch"
"$VENV/bin/python" - <<'PY'
import c2rope, llamafactory, torch, torchaudio, torchvision, transformers
print(f"llamafactory lane: llamafactory {llamafactory.__version__}, transformers {transformers.__version__}, "
      f"torch {torch.__version__}, torchvision {torchvision.__version__}, torchaudio {torchaudio.__version__}, "
      f"c2rope from {c2rope.__file__}")
PY
status=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" \
    "$REPO/tests/test_llamafactory.py" || status=$?
cd "$REPO" && rm -rf "$scratch"
exit $status
