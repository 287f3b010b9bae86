#!/usr/bin/env bash
# GPU check: a few stage 1 and stage 2 steps of the `base` shape (random weights built from config: the real
# checkpoints cannot travel) under Ray Train + DeepSpeed on one GPU, with MFU and the data-wait share (the part
# of step time spent waiting on the data iterator) written to $OUT. It runs the training job itself
# (medlm.train.core.train via bench/gpu_check.py) on configs/stage{1,2}_prod.yaml with one-GPU overrides.
#
#   1. here, once (CPU; downloads the wheels the GPU machine lacks, writes a small data set):
#        bash bench/gpu_check.sh prepare              # -> .whl/ (~42 MB) and runs/gpu_check/data (~11 MB), both ignored
#   2. on the lent GPU machine (../shared/device/README.md), through the device tool's `run`:
#        command: bash bench/gpu_check.sh   carry: [".whl", "runs/gpu_check"]   timeout_s: 420
#      (expected ~5 min: wheels ~1, each stage ~2 with its final checkpoint; a stage is cut at STAGE_TIMEOUT)
#      -> $OUT/gpu_check.md (the table), stage1.json, stage2.json (every log window), stage1.log, stage2.log,
#         nvidia-smi.txt
#   CPU plumbing check of the same path (tiny preset, no GPU):  bash bench/gpu_check.sh smoke
#
# Status: written in a session that had no GPU. `bash -n` parses it, bench/gpu_check.py imports, and `smoke`
# ran the whole path on CPU; the GPU run itself has not happened yet, so no number from it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=runs/gpu_check/data
STAGE_TIMEOUT=${STAGE_TIMEOUT:-180}   # seconds per stage: start-up, 30 steps, the final checkpoint + export

case "${1:-run}" in
  prepare)
    # shellcheck disable=SC1091
    source .venv/bin/activate        # its pip downloads the wheels, its medlm writes the data
    [ -d .whl ] || bash ../shared/device/bundle.sh .whl
    # medlm resamples the 22.05 kHz TTS audio with soxr, which the GPU image lacks (not in bundle.sh's list)
    ls .whl/soxr-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl soxr
    rm -rf "$DATA"
    # stage 1 reads consult_text + qa_text, stage 2 consult_speech + qa_speech + qa_text (no CT, no utterances)
    MEDLM_STACK=external HF_HUB_OFFLINE=1 python ray_jobs/make_data.py --config configs/make_data.yaml \
      output="$PWD/$DATA" consultations=1000 speech_consultations=32 utterances=0 sentences=0 ct_cases=0
    du -sh .whl "$DATA"
    total=$(du -scm .whl "$DATA" | tail -1 | cut -f1)
    [ "$total" -le 60 ] || { echo "carried ${total} MiB: over the device tool's 64 MiB with the tree" >&2; exit 1; }
    ;;
  smoke)
    # shellcheck disable=SC1091
    source .venv/bin/activate
    out=${OUT:-runs/gpu_check/smoke}
    mkdir -p "$out"
    MEDLM_STACK=external HF_HUB_OFFLINE=1 python bench/gpu_check.py --stage stage1 --smoke --steps 4 --log-every 2 \
      --data "$DATA" --out "$out" --workdir /tmp/gpu_check_smoke
    python bench/gpu_check.py --summary --out "$out"
    ;;
  run)
    : "${OUT:?set OUT to the output folder (the device tool sets it)}"
    [ -d .whl ] && [ -d "$DATA" ] || { echo "run \`bash bench/gpu_check.sh prepare\` first, carry .whl and runs/gpu_check" >&2; exit 2; }
    # shellcheck disable=SC1091
    source .whl/install.sh .whl      # ray, deepspeed, ... into /tmp/site (PYTHONPATH); TORCH_CUDA_ARCH_LIST=9.0
    # Ray's workers import medlm from this tree (not installed there); never the embedded S3 server
    export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1 MEDLM_STACK=external HF_HUB_OFFLINE=1 DS_ACCELERATOR=cuda
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    for stage in stage1 stage2; do   # one process each: the GPU and Ray start clean; a failure keeps the other
      timeout "$STAGE_TIMEOUT" python3 bench/gpu_check.py --stage "$stage" --data "$DATA" --out "$OUT" \
        > "$OUT/$stage.log" 2>&1 || echo "$stage failed (exit $?): see $stage.log" >&2
      tail -n 25 "$OUT/$stage.log"
      ray stop --force > /dev/null 2>&1 || true
    done
    python3 bench/gpu_check.py --summary --out "$OUT"
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh [prepare|smoke|run]" >&2
    exit 2
    ;;
esac
