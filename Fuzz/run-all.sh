#!/usr/bin/env bash
# Runs every fuzz target of Fuzz/Package.swift for SECONDS each, one after another, and prints a
# table (one row per target) in the format of README.md's "Runs". Exits non-zero when a target
# crashed (or did not build or run), naming the input that did it.
#   Fuzz/run-all.sh 30              # 30 s each
#   Fuzz/run-all.sh 600 FuzzNet     # only the targets named after SECONDS
# Each target's corpus grows in corpus/TARGET (not committed); a crash's input is kept in
# artifacts/TARGET/ and its log in artifacts/TARGET/log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:?usage: run-all.sh SECONDS [TARGET...]}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "run-all.sh: SECONDS must be a whole number above 0, got '$seconds'" >&2; exit 2; }
shift
# The targets, as the package declares them: every executableTarget (FuzzSupport is a library).
mapfile -t all < <(grep -oE '\.executableTarget\(name: *"[A-Za-z0-9_]+"' Package.swift | sed -E 's/.*"(.*)"/\1/')
[[ ${#all[@]} -gt 0 ]] || { echo "run-all.sh: no executableTarget in Package.swift" >&2; exit 2; }
targets=("${all[@]}")
if [[ $# -gt 0 ]]; then
    targets=("$@")
    for t in "${targets[@]}"; do
        [[ " ${all[*]} " == *" $t "* ]] || { echo "run-all.sh: no fuzz target $t (there are: ${all[*]})" >&2; exit 2; }
    done
fi

# One build of every target (run.sh builds the same way, so its later builds are no-ops).
log=$(mktemp)
echo "run-all.sh: building ${#targets[@]} targets (release, -sanitize=fuzzer,address)..." >&2
if ! swift build -c release --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address >"$log" 2>&1; then
    grep -E 'error' "$log" | head -20 >&2 || tail -20 "$log" >&2
    echo "run-all.sh: the build failed" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"

# libFuzzer's final stats and progress lines: "stat::number_of_executed_units: 123", "#123 DONE cov: 45 ...".
final_stat() { sed -nE "s/^stat::$1: *([0-9]+).*/\1/p" "$2" | tail -1; }
field() { grep -E '^#[0-9]+' "$2" | tail -1 | sed -nE "s/.* $1: *([0-9]+).*/\1/p"; }
number() { if [[ -n $1 ]]; then sed -E ':a; s/([0-9])([0-9]{3})($|,)/\1,\2\3/; ta' <<<"$1"; else echo -; fi; }

today=$(date -u +%F)
failed=()
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    out="artifacts/$t/log"
    seeds=(); [[ -d seeds/$t ]] && seeds=("seeds/$t")
    echo "run-all.sh: $t for $seconds s..." >&2
    start=$(date +%s)
    ".build-fuzz/release/$t" "corpus/$t" "${seeds[@]}" -max_total_time="$seconds" -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$out" 2>&1
    status=$?
    elapsed=$(( $(date +%s) - start ))
    runs=$(final_stat number_of_executed_units "$out"); speed=$(final_stat average_exec_per_sec "$out")
    units=$(final_stat new_units_added "$out"); rss=$(final_stat peak_rss_mb "$out")
    cov=$(field cov "$out")
    artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$out" | tail -1)
    if [[ $status -eq 0 ]]; then
        crashes=0; result="no crash"
    else
        crashes=1
        result="CRASH (exit $status): ${artifact:-no input written; see $out}"
        failed+=("$t: ${artifact:-exit $status, see Fuzz/$out}")
    fi
    rows+=("| $t | $today | $elapsed | $(number "$runs") | $(number "$speed") | $(number "$units") | $(number "$cov") | ${rss:--} MB | $crashes | $result |")
done

echo
echo "| target | date | seconds | runs | exec/s | new units | coverage | peak RSS | crashes | result |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo >&2
    for f in "${failed[@]}"; do echo "run-all.sh: crash in $f" >&2; done
    exit 1
fi
