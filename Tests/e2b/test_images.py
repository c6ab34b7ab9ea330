"""An OCI image as a template id: `Sandbox.create(template="HOST:PORT/NAME:TAG")` starts a sandbox
of that image, and commands get the image's Env, WorkingDir and User (docs/images.md).

The image is made with umoci and pushed with skopeo to Debian's docker-registry on 127.0.0.1
(Tests/images/), with bash-static as /bin/bash since the SDK runs commands through bash;
`kiln template create --image REF` makes its template first, as the confined
service runs no mkfs (docs/service.md)."""

import pathlib
import shutil
import subprocess
import tempfile

import pytest
from e2b import Sandbox

from support import KILN, REPO, REQUEST_TIMEOUT

IMAGES = REPO / "Tests" / "images"


@pytest.fixture(scope="module")
def image_ref():
    work = pathlib.Path(tempfile.mkdtemp(prefix="kiln-e2b-img-", dir="/tmp"))
    registry = work / "registry"
    try:
        address = subprocess.run([str(IMAGES / "registry.sh"), "start", str(registry)], check=True,
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        subprocess.run([str(IMAGES / "make-images.sh"), str(work / "img")], check=True, capture_output=True, timeout=300)
        # The SDK runs every command through `/bin/bash -l -c`: the `config` image plus a static bash.
        layout, bundle = work / "img" / "oci", work / "bundle"
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:config", str(bundle)], check=True, capture_output=True, timeout=120)
        shutil.copy("/bin/bash-static", bundle / "rootfs" / "bin" / "bash")
        subprocess.run(["umoci", "repack", "--image", f"{layout}:config-bash", str(bundle)], check=True, capture_output=True, timeout=120)
        ref = f"{address}/e2b/config:v1"
        subprocess.run([str(IMAGES / "push.sh"), str(layout), "config-bash", address, "e2b/config:v1"],
                       check=True, capture_output=True, timeout=120)
        made = subprocess.run([KILN, "template", "create", "--image", ref], capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stderr
        yield ref
    finally:
        subprocess.run([str(IMAGES / "registry.sh"), "stop", str(registry)], capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_image_reference_as_template(service, image_ref):
    sandbox = Sandbox.create(template=image_ref, timeout=120, request_timeout=REQUEST_TIMEOUT)
    try:
        result = sandbox.commands.run("/bin/busybox id -u; pwd; echo $KILN_TEST", timeout=120)
        # make-images.sh's `config` image: User 1000:1000, WorkingDir /work, Env KILN_TEST=yes.
        assert result.stdout.split() == ["1000", "/work", "yes"]
        explicit = sandbox.commands.run("/bin/busybox pwd", cwd="/", timeout=120)
        assert explicit.stdout.strip() == "/"
        # A service that crashes and restarts adopts the sandbox with its image's defaults.
        service.crash()
        service.start()
        again = sandbox.commands.run("/bin/busybox id -u; pwd; echo $KILN_TEST", timeout=120)
        assert again.stdout.split() == ["1000", "/work", "yes"]
    finally:
        sandbox.kill()


def test_unknown_image_reference_is_refused(service):
    with pytest.raises(Exception) as raised:
        Sandbox.create(template="127.0.0.1:9/none/such:v1", timeout=60, request_timeout=REQUEST_TIMEOUT)
    assert "none/such" in str(raised.value)
