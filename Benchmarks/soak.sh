#!/usr/bin/env bash
# Soak: N create/exec/destroy cycles through `kiln run` and through `kiln serve`, counting what is
# left behind; exits 1 on growth. Not part of the tests. Options and counts: Benchmarks/soak.py.
#   sudo Benchmarks/soak.sh --runs 50 --service-runs 50
exec python3 "$(dirname "${BASH_SOURCE[0]}")/soak.py" "$@"
