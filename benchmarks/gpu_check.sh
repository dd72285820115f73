#!/usr/bin/env bash
# The one prepared GPU check, run from the repo root on the device machine:
#   bash benchmarks/gpu_check.sh [STEP ...]        (results under $OUT, default ./gpu_out)
# STEP: tests (every -m gpu test in the repo: attention_tests, infonce_tests, other_tests),
# bench (attention_bench, infonce_bench, spectral_embed_bench, encoder_bench: the kernels
# against their peers, the whole encoder; embed_bench: embedding throughput, ~2 min
# estimated, never run on a GPU yet), or any single
# step, also attention_bench_full (every benchmark shape). Default: tests bench.
#
# Bare image: torch, triton, einops, safetensors, numpy, pytest; no rasterio, DeepSpeed,
# PyYAML, pytest-timeout or xformers. rsfm is put on the path without its dependencies
# (pip --no-deps, or symlinks where pip cannot build); tests that need a missing package
# skip with the reason (see the junit XML and logs).
#
# Time: every step has its own limit, and the whole run stops starting steps when
# GPU_CHECK_BUDGET_S (default 540 s: one device command may run 600 s) would be exceeded,
# so nothing can hang the lease. Expected times on an H100-class machine with a cold
# Triton cache (estimates: no GPU run yet): attention_tests ~3 min (first compiles and
# the autotune test), infonce_tests ~2 min, other_tests ~1 min, attention_bench ~3 min
# (autotuning the long cases once; the timings persist in Triton's cache), infonce_bench
# ~3 min. On a fresh machine run it as two commands: `bash benchmarks/gpu_check.sh tests`,
# then `... bench` (a second call on a warm machine reuses the compiled kernels and the
# autotune timings under ~/.triton).
# Each step writes OUT/<step>.log; OUT/summary.txt lists step, exit status and seconds
# (124 = stopped by its limit; partial benchmark JSON is kept: it is rewritten per case).
set -uo pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
START=$(date +%s)
MARK=$(mktemp)  # its mtime: what this run added to Triton's cache is newer
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

site=/tmp/rsfm_site
rm -rf "$site"
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" . \
    >"$OUT/install.log" 2>&1; then
  echo "pip could not install rsfm (see $OUT/install.log): linking the packages instead"
  mkdir -p "$site"
  ln -sfn "$PWD/rsfm_core" "$site/rsfm_core"
  ln -sfn "$PWD/kernels" "$site/rsfm_kernels"
  ln -sfn "$PWD/train" "$site/rsfm_train"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  command -v nvidia-smi >/dev/null \
    && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'capability', torch.cuda.get_device_capability() if torch.cuda.is_available() else None)"
} 2>&1 | tee "$OUT/gpu.txt"
echo "step exit seconds" >"$OUT/summary.txt"

step() {  # step NAME SECONDS CMD...: run with min(SECONDS, what the budget has left)
  local name=$1 secs=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 10))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left ==" | tee -a "$OUT/summary.txt"
    return
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "== $name (limit ${secs}s) =="
  local t0=$(date +%s)
  timeout --kill-after=10 "$secs" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "$name $rc $(($(date +%s) - t0))" | tee -a "$OUT/summary.txt"
}

PYTEST=(python3 -m pytest -q -p no:cacheprovider -rs -m gpu)
run_step() {
  case "$1" in
    tests) run_step attention_tests; run_step infonce_tests; run_step other_tests ;;
    bench) run_step attention_bench; run_step infonce_bench; run_step spectral_embed_bench
           run_step encoder_bench; run_step embed_bench ;;
    attention_tests)
      step attention_tests 240 "${PYTEST[@]}" --durations=15 tests/kernels \
        --ignore=tests/kernels/test_infonce.py --junitxml "$OUT/attention_tests.xml" ;;
    infonce_tests)
      step infonce_tests 150 "${PYTEST[@]}" tests/kernels/test_infonce.py \
        --junitxml "$OUT/infonce_tests.xml" ;;
    other_tests)  # the model in bf16 with Triton attention, inference (skips without rasterio)
      step other_tests 120 "${PYTEST[@]}" tests --ignore=tests/kernels \
        --junitxml "$OUT/other_tests.xml" ;;
    attention_bench)  # issue 15's targets: long N in {4k, 16k}, D in {64, 128}; short L
      step attention_bench 240 python3 -m benchmarks.attention --subset targets \
        --json "$OUT/attention.json" ;;
    attention_bench_full)
      step attention_bench_full 540 python3 -m benchmarks.attention --json "$OUT/attention_full.json" ;;
    infonce_bench)
      # InfoNCE: triton vs torch vs reference, N = M in {4k..256k}, D in {128, 256}, + GEMM
      # rate; the reference is skipped where its N x M float32 matrices cannot fit.
      step infonce_bench 240 python3 -m benchmarks.infonce --max-case-s 10 --json "$OUT/infonce.json" ;;
    spectral_embed_bench)  # issue 13: triton vs torch vs reference vs conv2d, S2 and hyperspectral
      step spectral_embed_bench 120 python3 -m benchmarks.spectral_embed --json "$OUT/spectral_embed.json" ;;
    encoder_bench)  # whole rsfm_tiny forward (bf16): the sync-free path on the GPU
      step encoder_bench 60 python3 -m benchmarks.encoder_forward --json "$OUT/encoder_forward.json" ;;
    embed_bench)  # issue 18: images/s and km2/s, 128 px x 12 bands, bf16, eager + torch.compile
      step embed_bench 150 python3 -m benchmarks.embed --device cuda --models rsfm_tiny,rsfm_base \
        --img-batch 256 --json "$OUT/embed_throughput.json" ;;
    *) echo "unknown step $1 (tests, bench, attention_tests, infonce_tests, other_tests, attention_bench, attention_bench_full, infonce_bench, spectral_embed_bench, encoder_bench, embed_bench)" ;;
  esac
}

for s in "${@:-tests bench}"; do
  for one in $s; do run_step "$one"; done
done
# Autotuning choices made here (small JSON files from Triton's cache), for docs/attention.md.
find "${TRITON_CACHE_DIR:-$HOME/.triton/cache}" -name '*.autotune.json' -newer "$MARK" 2>/dev/null |
  while read -r f; do cp "$f" "$OUT/autotune_$(basename "$(dirname "$f")" | cut -c1-12)_$(basename "$f")"; done
# Not on the GPU image, so not run here: benchmarks.train_throughput needs DeepSpeed
# (+ webdataset); benchmarks.embed's file cases need rasterio/pyarrow/shapely (its
# --device cuda throughput case, embed_bench above, needs none of them).
cat "$OUT/summary.txt"
ls -la "$OUT"
