"""Turns YAML text or CLI flags into a validated `Manifest`.

Every error names the key path and the reason (`models[1].nctx: must be > 0`)
so that a user can fix a manifest without reading a traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from backends.registry import ENGINES, engine_for
from gateway.manifest.hub import parse_source
from gateway.observability.redact import scrub
from schemas.manifest import Manifest, ModelFormat, ModelType, ServerSettings

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ManifestError(Exception):
    """A manifest that cannot be served. `problems` are `key.path: reason` lines."""

    def __init__(self, problems: list[str], origin: str = "manifest"):
        self.problems = problems
        self.origin = origin
        super().__init__("\n".join(problems))

    def report(self) -> str:
        """What the CLI prints: the origin, then one `key.path: reason` line per problem."""
        return scrub(f"nexa: invalid {self.origin}:\n" + "".join(f"  {p}\n" for p in self.problems))


def substitute(value: Any, environ: dict[str, str] | None = None, path: tuple[Any, ...] = ()) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in every string value (not in comments or keys).

    An unset variable without a default is an error that names the key path."""
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: substitute(v, env, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, env, path + (i,)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""
        missing.append(name)
        return ""

    result = _VAR.sub(replace, value)
    if missing:
        raise ManifestError([f"{key_path(path)}: environment variable {name} is not set and has no default"
                             for name in missing])
    if result != value and _VAR.fullmatch(value):
        # A value that is exactly one variable takes the variable's YAML type (port: ${PORT} -> int).
        try:
            return yaml.safe_load(result) if result else result
        except yaml.YAMLError:
            return result
    return result


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _reason(error: dict[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}"
    if kind == "enum":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"][0].lower() + error["msg"][1:]


def _problems(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    return [f"{key_path(prefix + tuple(err['loc']))}: {_reason(err)}" for err in exc.errors()]


def parse_text(text: str, origin: str = "manifest", base_dir: Path | None = None) -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise ManifestError([f"{where}: {getattr(exc, 'problem', None) or exc}"], origin) from None
    if not isinstance(data, dict):
        raise ManifestError(["(top level): must be a mapping with a `models` list"], origin)
    try:
        data = substitute(data)
    except ManifestError as exc:
        raise ManifestError(exc.problems, origin) from None
    return build(data, origin, base_dir)


def load_file(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read: {exc.strerror or exc}"], str(path)) from None
    return parse_text(text, str(path), path.parent)


def _apply_catalog_defaults(models: Any) -> None:
    """`source: gemma` implies the catalog's type and format unless the manifest says otherwise."""
    if not isinstance(models, list):
        return
    for model in models:
        if not isinstance(model, dict) or not isinstance(model.get("source"), str):
            continue
        try:
            source = parse_source(model["source"])
        except ValueError:
            continue
        if source.entry is not None:
            model.setdefault("type", source.entry.type)
            model.setdefault("format", source.entry.format)


def _resolve_local(models: Any, base_dir: Path | None) -> None:
    """Relative local paths are relative to the manifest's folder, so a repo is portable."""
    if base_dir is None or not isinstance(models, list):
        return
    for model in models:
        if not isinstance(model, dict):
            continue
        for key in ("source", "mmproj"):
            value = model.get(key)
            if isinstance(value, str) and value.startswith(("./", "../")):
                model[key] = str((base_dir / value).resolve())


def build(data: dict[str, Any], origin: str = "manifest", base_dir: Path | None = None) -> Manifest:
    data = dict(data)
    problems: list[str] = []
    server_raw = data.pop("server", None) or {}
    if not isinstance(server_raw, dict):
        raise ManifestError(["server: must be a mapping"], origin)
    try:
        server = ServerSettings(**server_raw)
    except ValidationError as exc:
        problems += _problems(exc, ("server",))
        server = None
    _apply_catalog_defaults(data.get("models"))
    _resolve_local(data.get("models"), base_dir)
    manifest = None
    try:
        manifest = Manifest.model_validate({**data, "server": server or ServerSettings.model_construct()})
    except ValidationError as exc:
        problems += _problems(exc)
    if manifest is not None:
        problems += _semantic_problems(manifest)
    if problems:
        raise ManifestError(problems, origin)
    return manifest


def _semantic_problems(manifest: Manifest) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(manifest.models):
        for field, name in [("name", spec.name), *(("aliases", a) for a in spec.aliases)]:
            if name in seen:
                problems.append(f"models[{index}].{field}: {name!r} is already used by models[{seen[name]}]")
            else:
                seen[name] = index
        if spec.backend is None and (spec.type, spec.format) not in ENGINES:
            served = ", ".join(f"{t.value}/{f.value}" for t, f in ENGINES)
            problems.append(
                f"models[{index}].format: no backend serves type {spec.type.value} in format {spec.format.value} "
                f"(served: {served})"
            )
        engine = engine_for(spec)
        if spec.parallel > 1 and spec.backend is None and engine is not None and engine.batched is None:
            why = (" (its images are evaluated by llama-cpp-python's chat handler into a single-sequence "
                   "context)" if spec.type == ModelType.MULTIMODAL else "")
            batching = ", ".join(f"{t.value} {f.value}" for (t, f), e in ENGINES.items() if e.batched)
            problems.append(f"models[{index}].parallel: continuous batching serves {batching} models only; "
                            f"{spec.type.value}/{spec.format.value} cannot run requests in parallel{why}. "
                            "Use `replicas` for more instances")
        try:
            source = parse_source(spec.source)
        except ValueError as exc:
            problems.append(f"models[{index}].source: {exc}")
        else:
            problems += _pin_problems(index, spec, source)
        problems += option_problems(index, spec)
    return problems


def option_problems(index: int, spec: Any) -> list[str]:
    """`options:` checked against the backend's typed options (backends.options), before any load."""
    found = engine_for(spec)
    if found is None:  # a custom backend owns its options
        return []
    engine, model = found.name, found.options
    try:
        model.model_validate(spec.options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = key_path(("models", index, "options", *err["loc"]))
            if err["type"] == "extra_forbidden":
                name = str(err["loc"][-1])
                close = difflib.get_close_matches(name, list(model.model_fields), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                problems.append(f"{where}: unknown option for {engine}{hint}")
            else:
                problems.append(f"{where}: {_reason(err)}")
        return problems
    return []


def _pin_problems(index: int, spec: Any, source: Any) -> list[str]:
    """A pin that would be silently ignored is an error: the user believes it is checked."""
    if spec.format == ModelFormat.remote:
        return []
    problems = []
    if spec.revision and source.kind != "hf":
        problems.append(f"models[{index}].revision: only hf: sources have revisions "
                        "(pypi: pins the version in the source, pkg==version)")
    if spec.sha256 and source.kind == "catalog":
        problems.append(f"models[{index}].sha256: catalog entries carry their own checksums; "
                        "pin a local, hf: or pypi: source instead")
    if spec.sha256 and source.kind == "hf" and not spec.file and source.value.count("/") < 2:
        problems.append(f"models[{index}].sha256: a whole hf: repository has no single checksum; "
                        "name the file (hf:owner/repo/file or `file:`)")
    return problems


def manifest_hash(manifest: Manifest) -> str:
    """A short, stable identity of what is served; shown by /ready and /v1/models."""
    return hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()[:16]

