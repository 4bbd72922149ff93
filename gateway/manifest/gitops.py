"""GitOps commands: `nexa schema` and `nexa plan`, and what the gateway shows of its
active manifest (`GET /admin/manifest`).

A deployment is a manifest in git. CI lints it against the JSON Schema (`nexa
schema`) and validates it (`nexa check`); a reviewer sees what merging it will
do to a running gateway (`nexa plan -c new.yaml --against http://gateway:8000`,
or against the previous version: a file or `git:REV`); the gateway applies it
in place when the file changes (`server.reload: true`). Each command takes the
parsed arguments and returns an exit code: 0, 1 when a gateway or git cannot
be read, 2 when a manifest is invalid (with its key paths).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from backends.registry import ENGINES
from gateway.manifest.load import ManifestError, build, load_file, parse_text
from gateway.manifest.plan import Plan, diff
from gateway.observability.redact import REDACTED, redact_url, scrub
from schemas.manifest import Manifest, ModelFormat, ServerSettings

API_KEY_ENV = "NEXA_API_KEY"  # the key `nexa plan` sends to a gateway (not a server setting)


class SourceError(Exception):
    """A manifest to compare against could not be read (gateway down, no key, git failed)."""


# -- nexa schema ---------------------------------------------------------------------------


def schema_document() -> dict[str, Any]:
    """The manifest's JSON Schema, with the rules pydantic cannot express in it added by hand."""
    schema = Manifest.model_json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
              "title": "nexa gateway manifest",
              "description": "Every model one gateway serves (nexa.yaml). ${VAR} and ${VAR:-default} are expanded "
                             "from the environment before validation, so a value written as ${VAR} in a non-string "
                             "field is only checked by `nexa check`."}
    defs = schema["$defs"]
    # `api_keys: ["a-key"]` is accepted as well as `{key, models, name}`.
    defs["ServerSettings"]["properties"]["api_keys"]["items"] = {
        "anyOf": [{"type": "string", "minLength": 8}, {"$ref": "#/$defs/ApiKey"}]}
    # `source` is required, except for remote models, which name base_url (or give it as source).
    defs["ModelSpec"]["allOf"] = [{
        "if": {"properties": {"format": {"const": ModelFormat.remote.value}}, "required": ["format"]},
        "then": {"anyOf": [{"required": ["base_url"]}, {"required": ["source"]}]},
        "else": {"required": ["source"]},
    }]
    # Each engine's typed `options` (backends.options), picked by the model's type and format.
    for (model_type, model_format), found in ENGINES.items():
        engine, model = found.name, found.options
        options_schema = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(options_schema.pop("$defs", {}))
        defs.setdefault(model.__name__, {**options_schema, "description": f"options for {engine}"})
        defs["ModelSpec"]["allOf"].append({
            "if": {"properties": {"type": {"const": model_type.value}, "format": {"const": model_format.value}},
                   "required": ["type", "format"]},
            "then": {"properties": {"options": {"$ref": f"#/$defs/{model.__name__}"}}},
        })
    return schema


def schema(args: argparse.Namespace, openapi_document: Callable[[str | None, bool], dict[str, Any]]) -> int:
    """`nexa schema`: print the manifest's JSON Schema (for editors' YAML language servers and CI
    linters), or with `--openapi` the gateway's OpenAPI document (for client generators), which
    the caller builds from the route table (`openapi_document(config, everything)`)."""
    if getattr(args, "openapi", False):
        try:
            document = openapi_document(args.config, args.all)
        except ManifestError as exc:
            sys.stderr.write(exc.report())
            return 2
    else:
        document = schema_document()
    text = json.dumps(document, indent=2) + "\n"
    output = getattr(args, "output", None)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


# -- what a gateway reveals of its manifest ---------------------------------------------------


def redact(data: dict[str, Any]) -> dict[str, Any]:
    """A dumped manifest without secrets: API key values, upstream keys and headers, URLs' credentials."""
    data = copy.deepcopy(data)
    server = data.get("server") or {}
    server["api_keys"] = [{**key, "key": REDACTED} if isinstance(key, dict) else REDACTED
                          for key in server.get("api_keys") or []]
    for model in data.get("models") or []:
        if model.get("api_key"):
            model["api_key"] = REDACTED
        headers = (model.get("options") or {}).get("headers")
        if model.get("format") == ModelFormat.remote.value and isinstance(headers, dict):
            model["options"]["headers"] = {name: REDACTED for name in headers}
        for field in ("base_url", "source"):
            if isinstance(model.get(field), str):
                model[field] = redact_url(model[field])
    return data


def env_overrides(environ: dict[str, str] | None = None) -> list[str]:
    """Server settings this process takes from NEXA_* variables rather than the file."""
    names = {key.upper() for key in (os.environ if environ is None else environ)}
    return [field for field in ServerSettings.model_fields if f"NEXA_{field.upper()}" in names]


# -- nexa plan ---------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> int:
    """`nexa plan -c NEW --against OLD`: what a reload from OLD to NEW would do."""
    try:
        new = load_file(args.config)
        old, label, ignored = _against(args.against, getattr(args, "api_key", None), Path(args.config))
    except ManifestError as exc:
        sys.stderr.write(exc.report())
        return 2
    except SourceError as exc:
        sys.stderr.write(scrub(f"nexa: {exc}\n"))
        return 1
    if label.startswith("http"):
        # The gateway hides its secrets; hide ours the same way so only real changes show.
        new = build(redact(new.model_dump(mode="json")), origin=str(args.config))
    result = diff(old, new)
    skipped = [name for name in result.server_changes if name in ignored]
    result.server_changes = [name for name in result.server_changes if name not in ignored]
    if getattr(args, "json", False):
        sys.stdout.write(scrub(json.dumps(as_json(result, old, new, skipped), indent=2) + "\n"))
    else:  # the --against URL may carry credentials too
        sys.stdout.write(scrub(render(result, old, new, f"{args.config} against {label}", skipped)))
    return 0


def _against(target: str, api_key: str | None, config: Path) -> tuple[Manifest, str, set[str]]:
    """The old manifest, a label for it, and server settings not to compare."""
    if target.startswith(("http://", "https://")):
        data, overrides, digest = fetch_active(target, api_key or os.environ.get(API_KEY_ENV))
        origin = f"manifest of the gateway at {target}"
        return build(data, origin=origin), f"{target} (serving {digest})", overrides
    if target.startswith("git:"):
        return _from_git(target[4:], config), target, set()
    return load_file(target), target, set()


def fetch_active(url: str, api_key: str | None, timeout: float = 10) -> tuple[dict[str, Any], set[str], str]:
    """GET /admin/manifest of a running gateway: (manifest data, env-overridden settings, hash)."""
    import httpx

    root = url.rstrip("/").removesuffix("/v1")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(root + "/admin/manifest", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot reach the gateway at {url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    if response.status_code == 401 and not api_key:
        raise SourceError(f"the gateway at {url} needs an API key: pass --api-key or set {API_KEY_ENV}")
    if response.status_code in (401, 403):
        raise SourceError(f"the gateway at {url} refused this API key ({response.status_code}); "
                          "reading its manifest needs a key that is not limited to some models")
    if response.status_code == 404:
        raise SourceError(f"the gateway at {url} has no GET /admin/manifest (is it an older version?)")
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise SourceError(f"the gateway at {url} answered {response.status_code}: {message}")
    overrides = {n for n in response.headers.get("x-nexa-env-overrides", "").split(",") if n}
    return response.json(), overrides, response.headers.get("x-nexa-manifest-hash", "?")


def _from_git(spec: str, config: Path) -> Manifest:
    """`git:REV`: the -c file as it is at REV; `git:REV:path`: another file at REV.
    Relative sources resolve against the file's folder, as for the file itself."""
    rev, _, path = spec.partition(":")
    if not rev:
        raise SourceError("--against git:REV[:path] needs a revision, e.g. git:HEAD or git:origin/main")
    target = Path(path) if path else config
    folder = target.resolve().parent
    try:
        result = subprocess.run(["git", "-C", str(folder), "show", f"{rev}:./{target.name}"], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"cannot run git: {exc}") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["git failed"])[-1]
        raise SourceError(f"cannot read {target.name} at {rev}: {reason}")
    return parse_text(result.stdout, f"{target.name} at {rev}", folder)


def changed_fields(old: Manifest, new: Manifest, name: str) -> list[str]:
    a = next(m for m in old.models if m.name == name).model_dump()
    b = next(m for m in new.models if m.name == name).model_dump()
    return sorted(key for key in b if a.get(key) != b[key])


def as_json(result: Plan, old: Manifest, new: Manifest, skipped: list[str] = ()) -> dict[str, Any]:
    data: dict[str, Any] = result.as_dict()
    data["fields"] = {name: changed_fields(old, new, name) for name in result.replace + result.update}
    data["restart_needed"] = bool(result.server_changes)
    data["not_compared"] = list(skipped)
    return data


def render(result: Plan, old: Manifest, new: Manifest, title: str, skipped: list[str] = ()) -> str:
    """The plan as a reviewer reads it (e.g. in a pull-request comment)."""
    specs = {m.name: m for m in new.models}
    lines = [f"plan: {title}"]

    def row(mark: str, verb: str, name: str, note: str = "") -> None:
        lines.append(f"  {mark} {verb:<10} {name:<24} {note}".rstrip())

    for name in result.add:
        row("+", "add", name, "loads now (preload)" if specs[name].preload else "loads on first request")
    for name in result.remove:
        row("-", "remove", name, "unloaded once its requests finish")
    for name in result.replace:
        row("~", "replace", name, "new weights: " + ", ".join(changed_fields(old, new, name)))
    for name in result.update:
        row("~", "update", name, "in place, no reload: " + ", ".join(changed_fields(old, new, name)))
    for name in result.unchanged:
        row("=", "unchanged", name)
    if result.server_changes:
        row("!", "restart", "server", "changed: " + ", ".join(result.server_changes)
            + " (take effect only when the gateway restarts)")
    if skipped:
        lines.append(f"  (not compared: {', '.join(skipped)}, which the gateway takes from its environment)")
    counts = [f"{len(result.add)} to add", f"{len(result.remove)} to remove", f"{len(result.replace)} to replace",
              f"{len(result.update)} to update in place", f"{len(result.unchanged)} unchanged"]
    tail = "; server changes need a restart" if result.server_changes else ""
    lines.append(("no changes" if result.empty() else ", ".join(counts) + tail))
    return "\n".join(lines) + "\n"


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """The flags of `nexa schema` and `nexa plan`, so cli.py only names the subcommand."""
    if command == "schema":
        parser.add_argument("-o", "--output", metavar="FILE", help="write the schema to FILE instead of stdout")
        parser.add_argument("--openapi", action="store_true",
                            help="the gateway's OpenAPI 3.1 document instead (what GET /openapi.json serves)")
        parser.add_argument("-c", "--config", metavar="FILE",
                            help="with --openapi: only the routes this manifest serves (default: every route)")
        parser.add_argument("--all", action="store_true", help="with --openapi and -c: every route anyway")
        return
    parser.add_argument("-c", "--config", metavar="FILE", required=True, help="the new manifest")
    parser.add_argument("--against", metavar="OLD", required=True,
                        help="what is running now: a manifest file, git:REV[:path] (e.g. git:HEAD, git:origin/main), "
                             "or a gateway URL (http://host:port; reads its GET /admin/manifest)")
    parser.add_argument("--api-key", help=f"API key for a gateway URL (default: ${API_KEY_ENV})")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
