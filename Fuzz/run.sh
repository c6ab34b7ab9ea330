#!/usr/bin/env bash
# Builds a fuzz target with libFuzzer + AddressSanitizer over all of Kiln's Swift modules and runs it.
#   Fuzz/run.sh FuzzVirtqueue 600     # ten minutes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
target=${1:?FuzzVirtqueue, FuzzBoot or FuzzAgentProtocol}
seconds=${2:-600}
swift build -c release --product "$target" --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address >/dev/null
mkdir -p "corpus/$target"
exec ".build-fuzz/release/$target" "corpus/$target" -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1
