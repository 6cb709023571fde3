#!/usr/bin/env bash
# One extra CI lane: the HF tests against another transformers release, in its own venv
# that sees the main environment's packages (torch, c2rope's in-place build, peft) but
# has its own transformers (and whatever that release pins: tokenizers, hub).
#
#   scripts/hf_lane.sh 4.57.6          # a pinned release
#   scripts/hf_lane.sh newest          # the newest release on the index right now
#
# Prints the release it tested; exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
WANT="${1:?usage: scripts/hf_lane.sh VERSION|newest}"
PY="${PYTHON:-python3}"
if [ "$WANT" = newest ]; then
    WANT=$("$PY" -m pip index versions transformers 2>/dev/null | sed -n 's/^transformers (\(.*\))$/\1/p' | head -1)
    [ -n "$WANT" ] || { echo "could not read the newest transformers release from the index" >&2; exit 1; }
fi
VENV=".venv-hf-$WANT"
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"
# torch is the main environment's (pinned): never let this resolve another one.
"$VENV/bin/python" -m pip install -q "transformers==$WANT" "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
# `kernels` (a dependency from transformers 5.25, pinned in the main environment) is seen
# through --system-site-packages. Releases 5.0-5.x older than its API build their hub-kernel
# table at import and fail ("Either a revision or a version must be specified") with
# kernels 0.19: such a release gets the kernels of its time in its own venv.
if ! "$VENV/bin/python" -c 'from transformers import LlamaForCausalLM' 2>/dev/null; then
    echo "transformers $WANT does not import beside kernels $("$PY" -c 'import importlib.metadata as m; print(m.version("kernels"))' 2>/dev/null); installing kernels<0.11 into its venv"
    "$VENV/bin/python" -m pip install -q "kernels<0.11"
fi
"$VENV/bin/python" - <<'PY'
import transformers, torch, c2rope
print(f"lane: transformers {transformers.__version__}, torch {torch.__version__}, c2rope from {c2rope.__file__}")
PY
"$VENV/bin/python" -m pytest -q tests/test_hf_*.py -p no:cacheprovider
