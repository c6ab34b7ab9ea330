#!/usr/bin/env bash
# Pushes one tag of an OCI layout to a test registry (plain HTTP on loopback):
#   Tests/images/push.sh LAYOUT TAG HOST:PORT NAME:TAG [USER:PASS]
# An index tag (multi) is pushed with all its images.
set -euo pipefail
layout=${1:?LAYOUT}; tag=${2:?TAG}; address=${3:?HOST:PORT}; dest=${4:?NAME:TAG}; creds=${5:-}
args=(--insecure-policy copy --all --dest-tls-verify=false)
[[ -n $creds ]] && args+=(--dest-creds "$creds")
skopeo "${args[@]}" "oci:$layout:$tag" "docker://$address/$dest" >/dev/null
