#!/usr/bin/env bash
# Rebuild the extension in place for development (incremental with ninja). A lock keeps
# concurrent builds in one checkout from overwriting each other's objects.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/c2rope-build.lock python setup.py -q build_ext --inplace "$@"
