#!/usr/bin/env bash
# Worker entry point: with REQUIRE_GPU=1 (the GPU image's default) refuse to start when no GPU
# is visible, instead of matting on the CPU many times slower at GPU-machine prices; then hand
# over to Beam's SDK boot with Dataflow's arguments.
set -euo pipefail

if [[ "${REQUIRE_GPU:-0}" == "1" ]]; then
  "${PYTHON:-python}" -m pipelines.gpu  # the same check as the ModelHandler's --require-gpu
fi
exec "${BEAM_BOOT:-/opt/apache/beam/boot}" "$@"
