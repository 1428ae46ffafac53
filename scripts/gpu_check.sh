#!/usr/bin/env bash
# The GPU check, made to need one short run on a GPU machine: for each GPU backend, build
# lalora, run the backend parity and kernel tests on the GPU (CI=true: a missing device fails
# instead of skipping), time one LoRA training step of a preset (f32, bf16 base weights, bf16
# with activation checkpointing; f16 on wgpu), run the walkthrough example, then print one
# Markdown table for the README.
#
#   scripts/gpu_check.sh                                   # cuda and wgpu, the 1B preset at 1 x 512
#   scripts/gpu_check.sh --backends wgpu --preset models/presets/small.json --seq 64   # llvmpipe
#   scripts/gpu_check.sh --backends flex --preset models/presets/small.json --seq 64   # the script itself, on the CPU
#
# Every check runs even if an earlier one failed; logs go to --out (default runs/gpu-check).
# Exit status: 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."

backends="cuda,wgpu"
preset="models/presets/llama-3.2-1b.json"
seq=512
out="runs/gpu-check"
while [ $# -gt 0 ]; do
    case "$1" in
        --backends) backends="$2"; shift 2 ;;
        --preset) preset="$2"; shift 2 ;;
        --seq) seq="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "unknown flag $1 (flags: --backends, --preset, --seq, --out)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
# cudarc's build script asks nvcc for the CUDA version; without a toolkit this tells it.
if ! command -v nvcc >/dev/null; then export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-12080}"; fi

rows=()
failed=0

# check NAME BACKEND COMMAND...: runs COMMAND, keeps its log, adds a row with the result.
check() {
    local name="$1" backend="$2"; shift 2
    local log start end result
    log="$out/$backend-$(echo "$name" | tr -cs "A-Za-z0-9." "-" | sed "s/-$//").log"
    echo "== $backend: $name ($(date +%H:%M:%S))"
    start=$(date +%s)
    if "$@" >"$log" 2>&1; then result="ok"; else result="FAILED (rc $?, see $log)"; failed=1; fi
    end=$(date +%s)
    case "$name" in
        parity*) result="$result: $(grep -h '^test result' "$log" | awk '{print $4 " passed, " $6 " failed"}' | paste -sd '/' | sed 's|/| / |g')" ;;
        bench*) result="$result: $(bench_summary "$log")" ;;
    esac
    rows+=("| $backend | $name | $result | $((end - start)) s |")
}

# The bench's JSON line as "N tokens/s, step M ms, peak host RSS R MiB[, peak GPU memory G MiB]".
bench_summary() {
    local line gpu
    line=$(grep -h '^{' "$1" | tail -n 1)
    [ -z "$line" ] && { echo "no figures"; return; }
    gpu=$(grep -h '^gpu_peak_mib' "$1" | cut -d' ' -f2)
    python3 - "$line" "$gpu" <<'EOF' 2>/dev/null || echo "$line"
import json, sys
r = json.loads(sys.argv[1])
text = f"{r['tokens_per_s']:.0f} tokens/s, step {r['step_ms_mean']:.0f} ms, peak host RSS {r['peak_rss_mib']:.0f} MiB"
if sys.argv[2]:
    text += f", peak GPU memory {sys.argv[2]} MiB"
print(text)
EOF
}

# Runs a bench and, on NVIDIA, samples the GPU's memory in use meanwhile (its peak, minus the
# memory in use before the bench, goes into the log as `gpu_peak_mib N`).
bench() {
    local backend="$1"; shift
    local sampler="" base=0 peak_file
    peak_file=$(mktemp)
    if command -v nvidia-smi >/dev/null; then
        base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1)
        (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -n 1 >>"$peak_file"; sleep 0.2; done) &
        sampler=$!
    fi
    cargo run --release --features "$backend" --bin lalora -- bench --preset "$preset" --batch-size 1 --seq "$seq" --json "$@"
    local rc=$?
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null
        echo "gpu_peak_mib $(( $(sort -n "$peak_file" | tail -n 1) - base ))"
    fi
    rm -f "$peak_file"
    return $rc
}

device_name() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1
    elif command -v vulkaninfo >/dev/null; then vulkaninfo --summary 2>/dev/null | grep -m1 deviceName | sed 's/.*= //'
    else echo "no GPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"; fi
}

for backend in ${backends//,/ }; do
    case "$backend" in cuda|wgpu|flex|ndarray) ;; *) echo "unknown backend $backend (cuda, wgpu; flex or ndarray for a dry run on the CPU)" >&2; exit 2 ;; esac
    check build "$backend" cargo build --release --features "$backend" --bin lalora --examples
    check "parity and kernels" "$backend" env CI=true cargo test --release --features "$backend" --test backends --test kernels
    check "bench f32, $(basename "$preset" .json) 1 x $seq" "$backend" bench "$backend"
    # wgpu has no bf16 (WGSL): its half type is f16, where the adapter has SHADER_F16.
    half=bf16; [ "$backend" = wgpu ] && half=f16
    check "bench $half, $(basename "$preset" .json) 1 x $seq" "$backend" bench "$backend" --dtype "$half"
    check "bench $half + checkpointing, $(basename "$preset" .json) 1 x $seq" "$backend" bench "$backend" --dtype "$half" --gradient-checkpointing
    check "walkthrough example" "$backend" cargo run --release --features "$backend" --example walkthrough -- --steps 3
done

echo
echo "GPU check, $(date -u +%Y-%m-%d), $(device_name), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
echo "| backend | check | result | time |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $failed
