#!/usr/bin/env bash
# Runs the E2B SDK suite (Tests/e2b): the unmodified e2b Python SDK drives `kiln serve`.
# Prepares what it needs first: a virtual environment with the pinned SDK and pytest
# (.venv-e2b, reused while its versions match), the Debian image (rootfs/build-debian-image.sh,
# cached by content) and the `base` template made from it (one boot; remade only when it is
# missing, unusable, or was made from another image or kernel). Run after `swift build`
# (Scripts/test.sh does both); extra arguments go to pytest, e.g. `-k quota` or `-m "not slow"`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

E2B_VERSION=2.63.0
PYTEST_VERSION=9.2.0
VENV=.venv-e2b
PY=${KILN_PYTHON:-python3}
KILN=${KILN_BIN:-$PWD/.build/debug/kiln}
CACHE=${KILN_CACHE_DIR:-/var/cache/kiln}

log() { echo "kiln-test-e2b: $*" >&2; }

[[ -x $KILN ]] || { log "no kiln binary at $KILN: run swift build (or Scripts/test.sh) first"; exit 1; }

# The virtual environment: rebuilt when missing, broken (its Python went away) or on other versions.
venv_versions() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("e2b"), m.version("pytest"))' 2>/dev/null
}
if [[ $(venv_versions || true) != "$E2B_VERSION $PYTEST_VERSION" ]]; then
    if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
        # Debian's own python3 keeps ensurepip (what venv needs) in python3-venv.
        log "installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    log "virtual environment $VENV with e2b==$E2B_VERSION pytest==$PYTEST_VERSION"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "e2b==$E2B_VERSION" "pytest==$PYTEST_VERSION"
    [[ $(venv_versions) == "$E2B_VERSION $PYTEST_VERSION" ]] || { log "the virtual environment did not get the pinned versions"; exit 1; }
fi

# The `base` template `kiln serve` starts sandboxes from (the SDK's default template).
log "Debian image (debootstrap on first use, a few minutes; cached)"
image=$(rootfs/build-debian-image.sh | tail -1)
kernel=$(readlink -f "$CACHE/kernel/vmlinux")
agent=$(rootfs/build-agent-disk.sh | tail -1)   # cached; a new agent makes a new template
made_from="image=$image kernel=$kernel agent=$agent"
stamp=$CACHE/templates/.base.made-from   # dot-names are not templates (kiln template list skips them)
templates=$("$KILN" template list)   # usable ones are listed by name alone
if ! grep -qx base <<<"$templates" || [[ $(cat "$stamp" 2>/dev/null) != "$made_from" ]]; then
    log "template base (one boot)"
    "$KILN" template create base --image "$image" >/dev/null
    echo "$made_from" >"$stamp"
fi

log "pytest Tests/e2b"
KILN_BIN=$KILN exec "$VENV/bin/python" -m pytest -p no:cacheprovider -v Tests/e2b "$@"
