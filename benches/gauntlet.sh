#!/usr/bin/env bash
# Wall time of a 20-VM gauntlet (bpfland: 5 scenarios x 2 topologies x 2
# flag profiles, 2 s of workload each), one VM at a time, and where each
# VM's time went: median prepare, boot, attach, start-workers, workload and
# teardown over the 20 runs, from their JSON reports, and how many started
# from a snapshot of their boot (the first VM of each topology saves one,
# unless ~/.cache/ktstr/snapshots has it already). Not criterion: each
# sample is a whole VM. Usage: benches/gauntlet.sh [KERNEL]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p ktstr
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
kernel=()
if [ $# -gt 0 ]; then kernel=(--kernel "$1"); fi
load=$(cut -d' ' -f1 /proc/loadavg)
start=$(date +%s.%N)
./target/debug/ktstr gauntlet "${kernel[@]}" --scheduler bpfland \
    --on 1n1l2c1t --on 1n2l2c1t --profile default --profile local-pcpu \
    --scenario steady --scenario ping-pong --scenario wakeup-latency \
    --scenario futex-herd --scenario cpuset-churn \
    --duration 2s --json-dir "$out" >"$out/summary.txt" 2>"$out/log.txt" || true
end=$(date +%s.%N)
tail -n 1 "$out/summary.txt"
python3 - "$out" "$start" "$end" "$load" <<'PY'
import json, glob, statistics, sys
out, start, end, load = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
runs = [json.load(open(f)) for f in glob.glob(out + "/*.json")]
wall = end - start
print(f"{len(runs)} VMs in {wall:.1f} s wall ({wall / max(len(runs), 1):.1f} s per VM), host load {load} at the start")
keys = ["prepare_ms", "boot_ms", "attach_ms", "start_workers_ms", "workload_ms", "teardown_ms"]
for k in keys:
    v = [r["phases"][k] for r in runs if "phases" in r]
    if v:
        print(f"  {k[:-3]:<14} median {statistics.median(v) / 1000:.2f} s  max {max(v) / 1000:.2f} s")
restored = sum(1 for r in runs if r.get("phases", {}).get("restored"))
print(f"  {restored} of {len(runs)} VMs started from a snapshot of their boot")
to_work = [sum(r["phases"][k] for k in keys[:4]) for r in runs if "phases" in r]
if to_work:
    print(f"  start -> workload median {statistics.median(to_work) / 1000:.2f} s (goal 2.5 s)")
PY
