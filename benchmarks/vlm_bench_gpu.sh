#!/usr/bin/env bash
# vlm-bench of the LLaVA-1.5-7B shape on one GPU (issue 19): LoRA training samples/s, tokens/s,
# MFU and peak memory for several batch sizes, without and with gradient checkpointing, and
# describe images/s. Random weights with the model's exact shapes (nothing is downloaded).
#
# Runs in the repository root; writes under $OUT (default ./outputs/vlm-bench-gpu):
#   vlm_bench_nogc.json/.md, vlm_bench_gc.json/.md, vlm_bench_gpu.log
# Dry run on a CPU: VLM_BENCH_SHAPE=tiny VLM_BENCH_PRECISION=32-true VLM_BENCH_SKIP_INSTALL=1.
# Budget: about 8 minutes on an H200 (each invocation is capped at 4 minutes).
#
# Installing: with a package registry in reach it installs the pinned torch and the project;
# on a machine without one (the workplace's GPU machine) it uses the image's own torch,
# transformers, peft and lightning, and needs only pydantic carried as wheels in .whl/, e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection
# (MLflow is not needed: --no-tracking; log the JSON afterwards with the files in $OUT).
set -u -o pipefail
OUT=${OUT:-outputs/vlm-bench-gpu}
mkdir -p "$OUT"
LOG="$OUT/vlm_bench_gpu.log"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
SHAPE=${VLM_BENCH_SHAPE:-llava-1.5-7b}        # tiny: a dry run of this script on a CPU
PRECISION=${VLM_BENCH_PRECISION:-bf16-mixed}
exec > >(tee -a "$LOG") 2>&1  # everything below goes to the terminal and the log
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
if [ -z "${VLM_BENCH_SKIP_INSTALL:-}" ]; then
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  $PY -m pip install -q torch==2.14.1 torchvision==0.29.1 || echo "pinned torch install failed"
fi
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the full install where a registry answers, else the source tree itself
timeout 120 $PY -m pip install -q --retries 0 --timeout 10 -e . 2>/dev/null \
  || echo "pip install -e . failed (no registry?): running from the source tree"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch, transformers, peft, lightning, pydantic; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())" || exit 3

bench() {  # $1 = name, rest = extra flags
  local name=$1; shift
  echo "== vlm-bench $name: $*"
  timeout 240 $PY -m bench vlm-bench --shape "$SHAPE" --precision "$PRECISION" --steps 5 \
    --warmup-steps 2 --describe-batch-size 32 --describe-batches 3 --max-new-tokens 32 \
    --out "$OUT/$name" --no-tracking "$@" 2>&1 | grep -v -e "Warning" -e "warn("
  if [ -f "$OUT/$name/vlm_bench.json" ]; then
    mv "$OUT/$name/vlm_bench.json" "$OUT/vlm_bench_$name.json"
    mv "$OUT/$name/vlm_bench.md" "$OUT/vlm_bench_$name.md"
    rmdir "$OUT/$name" 2>/dev/null
  else
    echo "== $name: no result (timeout or error)"
  fi
}

bench nogc --batch-size 4 --batch-size 8 --batch-size 16 --batch-size 32
bench gc --gradient-checkpointing --batch-size 16 --batch-size 32 --batch-size 64 --batch-size 128
echo "== done $(date -u +%FT%TZ)"
ls -l "$OUT"
