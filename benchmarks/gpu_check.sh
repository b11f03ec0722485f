#!/usr/bin/env bash
# The prepared GPU check (issue 11, section 4): at most ~8 minutes on one H200, no download.
#
#   bash benchmarks/gpu_check.sh [WORK]          # default WORK=/tmp/gpu_check
#   SHAPE=tiny bash benchmarks/gpu_check.sh      # the same steps on a tiny shape (CPU dry run)
#
# 1. installs rlhfkit with `pip install --no-deps -e .` (torch, transformers, peft and
#    accelerate are expected; the other dependencies from wheels in $WHEELS if given);
# 2. builds a random-init Llama-2-7b-shaped model in bf16 from its config, a tokenizer
#    trained offline on the demo world, long-prompt data and the course's params
#    (batch 64, 512 + 64 tokens, micro_batch_size and gradient_checkpointing "auto");
# 3. `rlhfkit plan`; 5 reward steps, 3 PPO steps, bulk inference of 64 prompts, printing
#    s/step, tokens/s, peak GPU memory next to the plan and MFU against 790 TFLOP/s;
# 4. the CUDA-marked tests (bf16 vs float32 losses, greedy generation CUDA vs CPU).
# Results: $WORK/gpu_check.json (and $OUT/ when the device runner sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-${WORK:-/tmp/gpu_check}}
SHAPE=${SHAPE:-llama-2-7b}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }

stamp "install"
if [ -z "${SKIP_INSTALL:-}" ]; then  # SKIP_INSTALL=1: rlhfkit is importable already
  if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
  fi
  $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2 || \
    $PY -m pip install -q --no-deps -e .
fi
missing=$($PY - <<'EOF'
import importlib.util as u
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "typer",
        "rich", "yaml", "tensorboard", "fsspec", "pandas", "numpy", "pytest"]
print(" ".join(n for n in need if u.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (carry their wheels and set WHEELS=DIR)" >&2
  exit 2
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

rm -rf "$WORK"; mkdir -p "$WORK"
stamp "build: demo data, tokenizer, random-init $SHAPE model, params"
$PY -m rlhfkit demo data "$WORK/demo-data" >/dev/null
$PY benchmarks/gpu_check.py build --work "$WORK" --shape "$SHAPE"

stamp "rlhfkit plan"
$PY -m rlhfkit plan "$WORK/params.json" || echo "(the plan says a stage will not fit)"

stamp "stages: 5 reward steps, 3 PPO steps, bulk inference of 64 prompts"
$PY benchmarks/gpu_check.py stages --work "$WORK" 2>&1 | grep -v "it/s\]" | tail -60

stamp "CUDA-marked tests"
$PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider || echo "CUDA TESTS FAILED"
rm -rf "$WORK/model" "$WORK/run"  # 13 GB of random weights; the figures are in gpu_check.json
stamp "done"
