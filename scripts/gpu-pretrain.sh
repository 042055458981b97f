#!/usr/bin/env bash
# Pretraining on a lent GPU machine (the `device` tool: one command of at most 10 minutes, 64 MiB of
# working tree sent, files of at most 16 MiB back), in three steps:
#
#   scripts/gpu-pretrain.sh pack WORKDIR           here: WORKDIR's prepared data (data/, indomain-data/)
#                                                  and pretrain-config.json, compressed into .gpu/
#   scripts/gpu-pretrain.sh train                  there (device run, carry [".gpu"]): a short probe times
#                                                  a step, then one whole run sized to MINUTES, bf16;
#                                                  $OUT gets model.pt in parts, metrics.jsonl, metrics.png
#   scripts/gpu-pretrain.sh unpack FILES_AT RUN    here: the parts joined into RUN/model.pt, checked
#
# The run has its own schedule (warmup, linear decay to zero at its last step); its model.pt continues on
# the CPU with `pocketbert pretrain --init RUN/model.pt` (a fresh optimiser) or fine-tunes directly. Its
# checkpoint (weights + optimiser, three times model.pt) stays on the machine: too big to come back.
#
# Settings (environment): PYTHON (default python3, the one holding torch there), GPU_DIR (.gpu), MINUTES
# (7: the training itself, inside one 10-minute call with unpacking, the probe and the copy back),
# DEVICE (cuda), PRECISION (bf16), BATCH (1024 sequences a step), LR (2e-3), WARMUP_FRACTION (0.05),
# THREADS (8), EVAL_EVERY (500), PROBE_STEPS (30), MAX_CARRY_MB (48: the repository travels too),
# PART_BYTES (15 MiB: each file that comes back), FOLDERS ("data indomain-data": what pack takes).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
GPU_DIR=${GPU_DIR:-.gpu}
PART_BYTES=${PART_BYTES:-$((15 * 1024 * 1024))}
[[ -n $GPU_DIR && $GPU_DIR != / ]] || { echo "gpu-pretrain: GPU_DIR must name a folder" >&2; exit 2; }

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

die() {
    echo "gpu-pretrain: $*" >&2
    exit 2
}

pack() {
    local workdir=${1:-}
    [[ -n $workdir && -d $workdir ]] || die "pack: WORKDIR '$workdir' is not a folder (the recipe's workdir)"
    [[ -f $workdir/pretrain-config.json ]] || die "pack: $workdir/pretrain-config.json not found"
    rm -rf "$GPU_DIR"
    mkdir -p "$GPU_DIR"
    cp "$workdir/pretrain-config.json" "$GPU_DIR/"
    local folder found=0
    for folder in ${FOLDERS:-data indomain-data}; do
        if [[ -f $workdir/$folder/index.json ]]; then
            tar -czf "$GPU_DIR/$folder.tar.gz" -C "$workdir" "$folder"
            found=1
        fi
    done
    ((found)) || die "pack: no prepared folder (data/ or indomain-data/ with index.json) in $workdir"
    local mb
    mb=$(du -sm "$GPU_DIR" | cut -f1)
    if ((mb > ${MAX_CARRY_MB:-48})); then
        rm -rf "$GPU_DIR"
        die "pack: $GPU_DIR holds ${mb} MB, more than ${MAX_CARRY_MB:-48} MB can travel beside the repository;" \
            "pack fewer folders (FOLDERS=data) or prepare a smaller one (fewer documents)"
    fi
    echo "packed $(ls "$GPU_DIR" | tr '\n' ' ')(${mb} MB); device run with carry [\"$GPU_DIR\"]:"
    echo "  bash scripts/gpu-pretrain.sh train"
}

# pretrain ARGS...: the project's own command, with the settings every run here shares
pretrain() {
    "$PYTHON" -m training.cli pretrain --config "$GPU_DIR/pretrain-config.json" \
        --device "${DEVICE:-cuda}" --precision "${PRECISION:-bf16}" --threads "${THREADS:-8}" \
        --batch-size "${BATCH:-1024}" --lr "${LR:-2e-3}" --weight-decay 0.01 --clip 1.0 --seed 0 "$@"
}

train() {
    [[ -n ${OUT:-} ]] || die "train: OUT (the folder whose files come back) is not set"
    local work folders=() archive
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-pretrain.XXXXXX")
    local data=$work/data
    mkdir -p "$data"
    for archive in "$GPU_DIR"/*.tar.gz; do
        tar -xzf "$archive" -C "$data"
        folders+=("$data/$(basename "$archive" .tar.gz)")
    done
    [[ ${#folders[@]} -gt 0 ]] || die "train: no data in $GPU_DIR (run 'pack' here first, then carry it)"

    # the probe: seconds a step at this batch on this machine, start-up and first steps left out
    local probe=$work/probe steps=${PROBE_STEPS:-30}
    pretrain --data "${folders[@]}" --out "$probe" --steps "$steps" --warmup 1 --log-every 10 \
        --eval-every 100000 --save-every 100000 >"$work/probe.log" 2>&1 ||
        { tail -20 "$work/probe.log" >&2; die "train: the probe run failed"; }
    local per_step
    per_step=$("$PYTHON" - "$probe/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"train"' in line]
tokens = rows[-1]["tokens_seen"] / rows[-1]["step"]  # real tokens a step
print(tokens / rows[-1]["tokens_per_s"])  # the last window's rate: past the warm-up steps
EOF
)
    local total
    total=$("$PYTHON" -c "print(max(1, int(${MINUTES:-7} * 60 / $per_step)))")
    local warmup
    warmup=$("$PYTHON" -c "print(max(1, int($total * ${WARMUP_FRACTION:-0.05})))")
    echo "probe: ${per_step} s a step at batch ${BATCH:-1024}; the run: $total steps, warmup $warmup"

    local run=$work/run
    pretrain --data "${folders[@]}" --out "$run" --steps "$total" --warmup "$warmup" \
        --eval-every "${EVAL_EVERY:-500}" --save-every 100000 --log-every 20
    split -b "$PART_BYTES" -d "$run/model.pt" "$OUT/model.pt.part-"
    cp "$run/metrics.jsonl" "$run/metrics.png" "$run/config.json" "$OUT/"
    sha256sum "$run/model.pt" | cut -d' ' -f1 >"$OUT/model.pt.sha256"
    rm -rf "$work"
    ls -la "$OUT"
}

unpack() {
    local files_at=${1:-} run=${2:-}
    [[ -n $files_at && -n $run ]] || die "unpack: give FILES_AT (the run's files_at) and RUN (a new folder)"
    ls "$files_at"/model.pt.part-* >/dev/null 2>&1 || die "unpack: no model.pt.part-* in $files_at"
    mkdir -p "$run"
    cat "$files_at"/model.pt.part-* >"$run/model.pt"
    local want got
    want=$(cat "$files_at/model.pt.sha256")
    got=$(sha256sum "$run/model.pt" | cut -d' ' -f1)
    [[ $want == "$got" ]] || die "unpack: $run/model.pt does not match its sha256 (a part is missing?)"
    cp "$files_at"/metrics.jsonl "$files_at"/metrics.png "$files_at"/config.json "$run/"
    echo "$run/model.pt: whole (sha256 $got). Continue: pocketbert pretrain --init $run/model.pt ..."
}

case ${1:-} in
pack) pack "${2:-}" ;;
train) train ;;
unpack) unpack "${2:-}" "${3:-}" ;;
*) usage ;;
esac
