#!/usr/bin/env bash
# The cost of data parallelism on the CPU: the same 20 training steps of the bundled model
# (16 sequences per step) on one device, as 1 and 2 local peers (--devices) and as 2
# processes on loopback (--nodes 2), in one sitting, twice, between plain runs. Prints the
# wall time of each run and the training tokens/s lalora reports. Builds with `distributed`.
#
#   scripts/bench_data_parallel.sh [--steps 20]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=20
if [ "${1:-}" = "--steps" ]; then steps="$2"; fi
cargo build -q --release --features distributed --bin lalora
bin=target/release/lalora
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args=(train --model models/tiny --data models/tiny/data/target-arithmetic.train.jsonl --init offset --lr 5e-3
    --steps "$steps" --batch-size 16 --max-len 128 --eval-every 0 --checkpoint-every 0 --seed 0 --force)

# timed NAME COMMAND...: runs COMMAND, prints NAME, seconds and lalora's last summary line.
timed() {
    local name="$1"; shift
    local start end
    start=$(date +%s.%N)
    "$@" >"$out/$name.log" 2>&1
    end=$(date +%s.%N)
    printf '%-10s %6.2f s   %s\n' "$name" "$(echo "$end - $start" | bc)" "$(grep -h 'steps' "$out/$name.log" | tail -n 1 | sed 's/ ->.*//')"
}
two_nodes() {
    local port=$((29800 + RANDOM % 1000))
    "$bin" "${args[@]}" --nodes 2 --node-rank 1 --master-port "$port" --out "$out/n1" >"$out/node1.log" 2>&1 &
    "$bin" "${args[@]}" --nodes 2 --node-rank 0 --master-port "$port" --out "$out/n0"
    wait
}

for round in 1 2; do
    timed "plain" "$bin" "${args[@]}" --out "$out/plain"
    timed "devices=1" "$bin" "${args[@]}" --devices 1 --out "$out/dev1"
    timed "devices=2" "$bin" "${args[@]}" --devices 2 --out "$out/dev2"
    timed "nodes=2" two_nodes
done
timed "plain" "$bin" "${args[@]}" --out "$out/plain"
