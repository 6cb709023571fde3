#!/usr/bin/env bash
# Create the "legacy" test environment from scratch: transformers 4.37.2 (the version
# the original LLaVA code pins) plus llava-torch 1.2.2.post1, in a clean venv that does
# NOT see the system site-packages (which hold transformers 5). tests/legacy/ runs in it:
#
#   scripts/setup_legacy_env.sh            # creates /work/main/.venv-legacy (or $1)
#   .venv-legacy/bin/python -m pytest tests/legacy -q
#
# c2rope is the checkout's in-place build (same torch 2.13.0), put on the venv's path by a .pth file.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-legacy}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip setuptools wheel

# torch pinned to the project's torch; numpy<2 because transformers 4.37 predates numpy 2.
"$VPY" -m pip install -q "torch==2.13.0" "transformers==4.37.2" "tokenizers<0.19" \
    "huggingface-hub<1.0" "numpy<2" "safetensors" "pytest"
# What llava's modules import at import time (llava-torch's own pins would downgrade
# torch, hence --no-deps): PIL in mm_utils, einops in the MPT code, sentencepiece and
# shortuuid for conversation/tokenizer helpers.
"$VPY" -m pip install -q pillow einops sentencepiece shortuuid
"$VPY" -m pip install -q --no-deps "llava-torch==1.2.2.post1"

# c2rope: the venv's torch is the checkout's torch (2.13.0), so the in-place build
# (scripts/build.sh) works unchanged; a .pth file puts the checkout on the venv's path
# (like PYTHONPATH, but permanent). Build it first if it is missing.
if ! ls c2rope/_C*.so >/dev/null 2>&1; then
    ./scripts/build.sh
fi
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$PWD" > "$SITE/c2rope-checkout.pth"
"$VPY" - <<'PY'
import torch, transformers, llava, c2rope
from llava.model import LlavaLlamaForCausalLM  # noqa: F401  (import must succeed)
print("legacy env ok: torch", torch.__version__, "transformers", transformers.__version__)
PY
