#!/usr/bin/env bash
# The GPU benchmark session, one script, <= 8 minutes on one H100/H200 (docs/performance.md):
#   - train step of the ~1B config (configs.common "1b") at seq 2048, bf16 compute, remat
#     dots_no_batch, batch 16: MFU against the datasheet dense bf16 peak, compile time;
#   - sampler decode at batch 1, 8, 64 and 256 (prompt 128, 256 new tokens, bf16 weights): fraction of
#     the HBM roofline (param + KV-cache bytes per step / datasheet bandwidth);
#   - one PPO iteration of the 1b config split into rollout, scoring and update (--skip_ppo: none).
#
# Run from anywhere; it works in the repository root:
#   bash scripts/bench_gpu.sh                 # on the device (the image's python3)
#   bash scripts/bench_gpu.sh --batch 8       # extra flags go to `scripts.bench gpu`
#   PYTHON=.venv/bin/python bash scripts/bench_gpu.sh --smoke   # CPU, tiny shapes: checks paths
#
# The image has jax/flax/optax/orbax but not ml-collections (configs.common imports it). If a
# folder .whl/ holds wheels (git-ignored; see docs/performance.md for the download line), they
# are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-runs/bench}  # $OUT is the device tool's folder that comes back
mkdir -p "$RESULTS"

if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "bench_gpu.sh: ml_collections is missing and .whl/ has no wheels (docs/performance.md)" >&2
    exit 2
  fi
fi

export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
"$PY" - <<'PYEOF'
import jax, flax, optax
print(f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}:",
      [d.device_kind for d in jax.devices()])
PYEOF
command -v nvidia-smi >/dev/null && \
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

start=$(date +%s)
timeout 450 "$PY" -m scripts.bench gpu --json "$RESULTS/bench_gpu.json" "$@" 2>&1 \
  | tee "$RESULTS/bench_gpu.log"
echo "bench_gpu.sh: $(( $(date +%s) - start )) s; results in $RESULTS/bench_gpu.json"
