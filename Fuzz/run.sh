#!/usr/bin/env bash
# Builds a fuzz target with libFuzzer + AddressSanitizer over all of Kiln's Swift modules and runs it.
#   Fuzz/run.sh FuzzVirtqueue 600     # ten minutes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
target=${1:?FuzzVirtqueue, FuzzNet, FuzzFUSE, FuzzBoot, FuzzAgentProtocol, FuzzSnapshot, FuzzServiceRequests, FuzzLaunch, FuzzTar, FuzzImages or FuzzEgress}
seconds=${2:-600}
log=$(mktemp)
if ! swift build -c release --product "$target" --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address >"$log" 2>&1; then
    grep -E 'error' "$log" | head -20 >&2 || tail -20 "$log" >&2
    echo "run.sh: building $target failed" >&2
    exit 1
fi
rm -f "$log"
mkdir -p "corpus/$target"
seeds=(); [[ -d seeds/$target ]] && seeds=("seeds/$target")
exec ".build-fuzz/release/$target" "corpus/$target" "${seeds[@]}" -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1
