"""Release packaging: the sdist and the wheel install and run in a fresh virtualenv; the
OCI image (``make image``: scripts/image) runs its entry point under runc, a container
runtime from Debian's packages, with the tools the director and the node agent need."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kubelvs import __version__

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (
    "owned_cidrs: [10.240.0.0/24]\nservices:\n"
    "  - {name: web, vip: 10.240.0.201, port: 80, scheduler: rr, realservers: [{address: 10.240.0.101}]}\n"
)


def _run(*argv: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


def test_the_sdist_and_the_wheel_install_and_run_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, ROOT)
    (wheel,) = dist.glob("kubelvs-*.whl")
    (sdist,) = dist.glob("kubelvs-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert f"kubelvs-{__version__}/src/kubelvs/app/metrics.py" in names
    assert f"kubelvs-{__version__}/src/kubelvs/py.typed" in names
    config = tmp_path / "lb.yaml"
    config.write_text(CONFIG)
    for artifact in (wheel, sdist):
        venv = tmp_path / f"venv-{artifact.suffix}"
        _run(sys.executable, "-m", "venv", venv)
        _run(venv / "bin" / "pip", "install", "--quiet", artifact)
        assert _run(venv / "bin" / "kubelvs", "--version").stdout == f"kubelvs {__version__}\n"
        assert "valid (1 services" in _run(venv / "bin" / "kubelvs", "validate", "-f", config).stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="runc and mmdebstrap need root")
def test_the_image_runs_kubelvs_with_its_tools_under_runc(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    _run(ROOT / "scripts" / "image", out, timeout=1200)
    archive = out / f"kubelvs-{__version__}.oci.tar"
    layout, bundle = tmp_path / "oci", tmp_path / "bundle"
    layout.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="tar")
    index = json.loads((layout / "index.json").read_text())
    tags = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert tags == [__version__]
    _run("umoci", "unpack", "--image", f"{layout}:{__version__}", bundle)
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["/opt/kubelvs/bin/kubelvs"]  # the image's entry point
    (bundle / "rootfs" / "tmp" / "lb.yaml").write_text(CONFIG)
    script = (
        "kubelvs --version && kubelvs validate -f /tmp/lb.yaml && "
        "for tool in ip nft ipvsadm conntrack keepalived bird birdc modprobe; do "
        "command -v $tool || exit 9; done"
    )
    spec["process"].update(args=["/bin/sh", "-c", script], terminal=False)
    (bundle / "config.json").write_text(json.dumps(spec))
    name = f"kubelvs-test-{secrets.token_hex(3)}"
    try:
        result = _run("runc", "run", "--bundle", bundle, name, timeout=120)
    finally:
        subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
        shutil.rmtree(bundle, ignore_errors=True)
    lines = result.stdout.splitlines()
    assert lines[0] == f"kubelvs {__version__}"
    assert "valid (1 services" in result.stdout
    tools = [line.rsplit("/", 1)[-1] for line in lines[2:]]
    assert tools == ["ip", "nft", "ipvsadm", "conntrack", "keepalived", "bird", "birdc", "modprobe"]


def test_the_manifests_run_the_image_make_image_builds() -> None:
    images = {
        path.name: re.findall(r"^\s+image:\s*(\S+)", path.read_text(), re.MULTILINE)
        for path in (ROOT / "deploy").glob("*.yaml")
    }
    assert (
        images["director-deployment.yaml"]
        == images["node-daemonset.yaml"]
        == [f"localhost/kubelvs:{__version__}"]
    )
    assert "kubelvs-$version.oci.tar" in (ROOT / "scripts" / "image").read_text()
