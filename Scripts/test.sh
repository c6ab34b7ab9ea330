#!/usr/bin/env bash
# Runs Kiln's whole test suite: unit tests, VM tests on /dev/kvm with tiny guests, and
# end-to-end boots of Kiln's own Linux kernel (about a minute of boots on hosts whose
# guest kernel mode is emulated), then the E2B SDK suite against `kiln serve`
# (Scripts/test-e2b.sh) and schemathesis against docs/openapi.yml. Installs and builds what the tests need first; arguments go to swift test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
Scripts/setup.sh --debug
command -v swift >/dev/null || export PATH=/opt/swift/usr/bin:$PATH
# Most sandbox tests restore the default template instead of booting: make it once (one boot;
# reused while the kernel and image are unchanged).
.build/debug/kiln template create >/dev/null
# The E2B SDK's `base` template (the Debian image, built by debootstrap on first use; then one
# boot). Made here, before `swift test`: its image build runs `swift build` for the agent, which
# would wait on the lock `swift test` holds if a test's `kiln serve` started it.
.build/debug/kiln template create base --image debian >/dev/null
# The library's own default template (the default image without the agent disk, which the CLI's
# template above uses): made by one test first, so that the suites that share it find it made
# instead of all booting at once when the parallel run starts.
swift test --filter templateOfTheOldFormatIsRefusedWithOneLine
swift test "$@"
Scripts/test-e2b.sh
# The control API against Kiln's own OpenAPI description (schemathesis; no VM is started).
exec Tests/schemathesis/run.sh
