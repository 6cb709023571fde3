#!/usr/bin/env bash
# CI lane: c2rope inside the trainers, at the NEWEST trl, peft, accelerate and deepspeed on
# the index (so a trainer release that bypasses the patch fails CI the day it comes out),
# with the main environment's torch and transformers (pinned) and c2rope's in-place build.
# Runs TRL's SFTTrainer tests and the HF Trainer + DeepSpeed ZeRO-2/3 test (CPU, 2 procs).
#
#   scripts/trainer_lane.sh            # venv .venv-trainers beside the checkout
#
# Prints the versions it tested; exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${TRAINER_VENV:-.venv-trainers}"
newest() { "$PY" -m pip index versions "$1" 2>/dev/null | sed -n "s/^$1 (\(.*\))\$/\1/p" | head -1; }
installed() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
same=1
for package in trl peft accelerate deepspeed; do
    [ -n "$(installed $package)" ] && [ "$(newest $package)" = "$(installed $package)" ] || same=0
done
if [ "$same" = 1 ]; then
    echo "trainer lane: the newest trl, peft, accelerate and deepspeed are the main lane's pins, which it just tested"
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
transformers_version=$("$PY" -c 'import transformers; print(transformers.__version__)')
# DS_BUILD_OPS=0: DeepSpeed's C++/CUDA ops are not prebuilt (the tests use torch's optimizer).
# torch and transformers stay the main lane's: never let this resolve another torch.
DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install -q -U trl peft accelerate deepspeed \
    "torch==$torch_version" "transformers==$transformers_version"
"$VENV/bin/python" - <<'PY'
import accelerate, deepspeed, peft, torch, transformers, trl, c2rope
print(f"trainer lane: trl {trl.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__}, "
      f"deepspeed {deepspeed.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
      f"c2rope from {c2rope.__file__}")
PY
tests=(tests/test_trainer_trl.py tests/test_trainer_trl_paths.py tests/test_trainer_deepspeed.py)
DS_ACCELERATOR=cpu "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
