#!/usr/bin/env bash
# The path a user's `pip install c2rope` takes, checked from this checkout:
#   1. build the sdist (`python -m build --sdist --no-isolation`) from a clean copy of the
#      checkout and check that it holds every tracked file under csrc/ (headers and CUDA
#      sources included);
#   2. build a wheel from that sdist alone (`pip wheel --no-build-isolation --no-deps`,
#      outside the checkout) and check its cp310-abi3 tag;
#   3. install the wheel with its [plots] extra into a fresh venv that holds only torch,
#      and from outside the checkout run the `c2rope` script, `python -m c2rope demo`, a
#      smoke test of the installed package, and the CPU op tests against it.
# The wheel is built by $PYTHON (default python3), which needs torch, setuptools>=77,
# ninja and `build`: what `pip install -e ".[test]"` leaves.
# Usage: scripts/check_sdist.sh          (TORCH_SPEC=... for the venv's torch)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say() { printf -- '--- %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

say "sdist, built from a clean copy of the checkout's files"
# A clean copy, because setuptools folds an existing c2rope.egg-info/SOURCES.txt (left by
# any earlier build here) into the sdist, which would hide a file the manifest misses.
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "check_sdist: needs a git checkout" >&2; exit 1; }
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -cf - -T - | tar -xf - -C "$WORK/src"
(cd "$WORK/src" && "$PYTHON" -m build --sdist --no-isolation --outdir "$WORK/dist" .) >"$WORK/sdist.log" 2>&1 ||
    { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/c2rope-*.tar.gz)
echo "$(basename "$SDIST")"
tar -tzf "$SDIST" | sed 's|^[^/]*/||' | sort >"$WORK/shipped.txt"
git ls-files csrc | sort >"$WORK/needed.txt"
missing=$(comm -23 "$WORK/needed.txt" "$WORK/shipped.txt")
if [ -n "$missing" ]; then
    printf 'missing from the sdist:\n%s\n' "$missing" >&2
    exit 1
fi
echo "ships all $(wc -l <"$WORK/needed.txt") files under csrc/"

say "wheel from the sdist alone"
(cd "$WORK" && "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/wheel" "$SDIST") \
    >"$WORK/wheel.log" 2>&1 || { tail -n 60 "$WORK/wheel.log"; exit 1; }
WHEEL=$(ls "$WORK"/wheel/c2rope-*.whl)
echo "$(basename "$WHEEL")"
case "$(basename "$WHEEL")" in
    *-cp310-abi3-*) ;;
    *) echo "the wheel is not tagged cp310-abi3" >&2; exit 1 ;;
esac

say "fresh venv: $TORCH_SPEC, then the wheel with [plots]"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
# CI's pins (ci/constraints.txt) hold here too, so the venv gets the versions CI tests.
PINS=()
if [ -f "$ROOT/ci/constraints.txt" ]; then PINS=(-c "$ROOT/ci/constraints.txt"); fi
{ "$VPY" -m pip install "${PINS[@]}" "$TORCH_SPEC" && "$VPY" -m pip install "${PINS[@]}" "$WHEEL[plots]" pytest; } \
    >"$WORK/venv.log" 2>&1 || { tail -n 40 "$WORK/venv.log"; exit 1; }
"$VPY" -m pip list 2>/dev/null | grep -iE "^(c2rope|torch|matplotlib|numpy) "

say "installed package, from outside the checkout"
cd "$WORK"
"$WORK/venv/bin/c2rope" info
"$VPY" -m c2rope demo --out "$WORK/demo" | tail -n 4
for png in mask rings; do
    test -s "$WORK/demo/$png.png" || { echo "demo wrote no $png.png" >&2; exit 1; }
done
"$VPY" - "$ROOT" <<'EOF'
import importlib.metadata as md
import os
import sys

import torch

import c2rope
from c2rope.reference import rotary_ref

site = os.path.join(sys.prefix, "lib")
assert c2rope.__file__.startswith(site), f"imported {c2rope.__file__}, not the venv's copy"
assert not c2rope.__file__.startswith(sys.argv[1])
assert md.version("c2rope") == c2rope.__version__, (md.version("c2rope"), c2rope.__version__)
so = [f for f in os.listdir(os.path.dirname(c2rope.__file__)) if f.startswith("_C")]
assert so == ["_C.abi3.so"], so
requires = md.requires("c2rope")
assert any(r.replace(" ", "").startswith("torch>=") for r in requires), requires
# The fused kernel against the float64 reference on an odd, non-contiguous input.
layout = c2rope.VisualLayout.from_spans([[(3, 5, 7)]], 47)
config = c2rope.C2RoPEConfig()
pos = c2rope.build_position_ids(layout, config)
rope = c2rope.C2RotaryEmbedding(dim=48, config=config)
q = torch.randn(2, 47, 3, 48).transpose(1, 2)
k = torch.randn(2, 47, 1, 48).transpose(1, 2)
cos, sin = rope(q, pos.expand(2, -1, -1))
q_rot, k_rot = c2rope.apply_rotary_pos_emb(q, k, cos, sin)
q_ref, k_ref = rotary_ref(q.double(), k.double(), cos.double(), sin.double())
err = max((q_rot - q_ref).abs().max().item(), (k_rot - k_ref).abs().max().item())
assert err < 1e-5, err
mask = c2rope.chebyshev_mask(layout, config)
assert mask.shape == (1, 1, 47, 47) and bool(mask[0, 0].any(-1).all())
print(f"smoke: c2rope {c2rope.__version__} from {os.path.dirname(c2rope.__file__)}; "
      f"rotary max |error| {err:.1e}")
EOF

say "CPU op tests against the installed package"
# From $WORK the checkout is not on sys.path (pytest adds tests/ for its conftest), so
# the tests import the venv's c2rope: checked first, then the same process runs them.
"$VPY" - "$ROOT" <<'EOF'
import sys

import pytest

import c2rope

assert c2rope.__file__.startswith(sys.prefix), c2rope.__file__
tests = [f"{sys.argv[1]}/tests/test_{name}.py" for name in ("cos_sin", "mask", "layout")]
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", sys.argv[1], *tests]))
EOF
