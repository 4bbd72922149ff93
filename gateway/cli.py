"""`nexa` command line. Flags never serve anything themselves: they only build a
one-model manifest, which goes through the same validation and loading path as
a manifest file. The CLI never reads standard input.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from gateway.manifest import catalog, gitops
from gateway.manifest.hub import NO_SPACE, FetchError, cache_root, fetch, fetch_model
from gateway.manifest.load import ManifestError, build, load_file
from gateway.manifest.partials import sweep_partials
from gateway.observability.logs import setup_logging
from gateway.state.urls import open_store
from schemas.manifest import Manifest, ModelType

MODEL_TYPES = [t.value for t in ModelType]
log = logging.getLogger("nexa.gateway.cli")


class UsageError(Exception):
    """Flags that break the rules of SERVER-API.md."""


def _add_manifest_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="serve the models declared in this manifest")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """MODEL and the flags that say what it is: the same for `server` and `pull`."""
    parser.add_argument("words", nargs="*", metavar="MODEL", help="[onnx] a catalog name, a local path (-lp) or a Hugging Face repo (-hf)")
    _add_manifest_flags(parser)
    parser.add_argument("-lp", "--local_path", action="store_true", help="MODEL is a local path; needs -mt")
    parser.add_argument("-mt", "--model_type", choices=MODEL_TYPES, type=str.upper,
                        help="the model's type; needs -lp or -hf")
    parser.add_argument("-hf", "--huggingface", action="store_true", help="MODEL is a Hugging Face repo (owner/repo[/file]); needs -mt")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexa", description="nexa gateway: serve local models behind an OpenAI-compatible API")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = commands.add_parser("server", help="serve one model (MODEL) or a manifest (-c FILE)",
                                 description="Serve one model, or every model of a manifest. `nexa server onnx MODEL` "
                                             "serves an ONNX model.")
    _add_model_flags(server)
    server.add_argument("--host", help="address to bind (default 127.0.0.1)")
    server.add_argument("--port", type=int, help="port to bind (default 8000)")
    server.add_argument("--reload", action="store_true",
                        help="apply manifest (or model file) changes while serving, and restart on code changes")
    server.add_argument("--nctx", type=int, help="context length of the model")
    server.add_argument("--offline", action="store_true", help="never download; use only cached model files")
    server.add_argument("--server", choices=["granian", "robyn"], dest="http_server",
                        help="HTTP server (default granian; also `server.http_server` in the manifest)")
    server.add_argument("--no-playground", action="store_false", dest="playground", default=None,
                        help="do not serve the playground page at /")

    check = commands.add_parser("check", help="validate a manifest without serving it")
    _add_manifest_flags(check)
    check.add_argument("--verify", action="store_true",
                       help="also hash every cached model file against its sha256 (nothing is downloaded)")

    pull = commands.add_parser("pull", help="fetch and verify every model a manifest (or MODEL) needs")
    _add_model_flags(pull)
    gitops.add_arguments("schema", commands.add_parser("schema", help="print the manifest's JSON Schema (for editors and CI)"))
    gitops.add_arguments("plan", commands.add_parser("plan", help="what a reload from OLD to a new manifest would do"))
    return parser


def one_model_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """Translate the original CLI's flags into a manifest with one model."""
    words = list(args.words)
    fmt = "gguf"
    if len(words) == 2 and words[0].lower() == "onnx":
        fmt, words = "onnx", words[1:]
    if len(words) != 1:
        raise UsageError("give exactly one MODEL (optionally after `onnx`), or -c FILE")
    target = words[0]
    if args.local_path and args.huggingface:
        raise UsageError("-lp and -hf cannot be used together")
    if args.local_path and not args.model_type:
        raise UsageError("-lp/--local_path must be used with -mt/--model_type")
    if args.huggingface and not args.model_type:
        raise UsageError("-hf/--huggingface must be used with -mt/--model_type")
    if args.model_type and not (args.local_path or args.huggingface):
        raise UsageError("-mt/--model_type must be used with -lp/--local_path or -hf/--huggingface")
    nctx = getattr(args, "nctx", None)  # `pull` has no --nctx
    if nctx is not None and nctx <= 0:
        raise UsageError("--nctx must be > 0")

    model: dict[str, Any] = {"preload": True}
    if fmt == "onnx":
        model["format"] = "onnx"  # a catalog name brings its own format unless `onnx` says otherwise
    elif args.local_path or args.huggingface:
        model["format"] = _guess_format(Path(target).expanduser(), args.model_type)
    if args.local_path:
        path = Path(target).expanduser().resolve()
        model.update(name=_name_from(path.stem if path.is_file() else path.name), source=str(path), type=args.model_type)
        if args.model_type == "MULTIMODAL":
            model.update(_split_vision_folder(path))
    elif args.huggingface:
        repo = target.removeprefix("hf:")
        model.update(name=_name_from(repo.split("/")[1] if "/" in repo else repo), source=f"hf:{repo}", type=args.model_type)
    else:
        model.update(name=_name_from(target), source=target)
        if fmt == "onnx" and catalog.lookup(target) is None:
            model["type"] = "NLP"
    if nctx is not None:
        model["nctx"] = nctx
    return {"models": [model]}


def _split_vision_folder(path: Path) -> dict[str, str]:
    """The documented rule for `-lp DIR -mt MULTIMODAL`: the folder's `*mmproj*.gguf` is the
    projector and its other .gguf file is the language model."""
    if not path.is_dir():
        return {}
    ggufs = sorted(path.glob("*.gguf"))
    projectors = [p for p in ggufs if "mmproj" in p.name.lower()]
    models = [p for p in ggufs if p not in projectors]
    if len(projectors) != 1 or len(models) != 1:
        raise UsageError(f"{path} must hold one *mmproj*.gguf projector and one other .gguf model "
                         f"(found {len(projectors)} projectors and {len(models)} models)")
    return {"source": str(models[0]), "mmproj": str(projectors[0])}


def _guess_format(path: Path, model_type: str) -> str:
    """The documented rule for -lp/-hf: AUDIO is a CTranslate2 folder (bin); a folder holding
    .onnx files is onnx; anything else is gguf."""
    if model_type == "AUDIO":
        return "bin"
    if path.is_dir() and (any(path.glob("*.onnx")) or any(path.glob("onnx/*.onnx"))):
        return "onnx"
    return "gguf"


def _name_from(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text).strip("-._")
    return cleaned or "model"


def load_manifest(args: argparse.Namespace) -> Manifest:
    if args.config and getattr(args, "words", None):
        raise UsageError("give either MODEL or -c FILE, not both")
    if args.config:
        if getattr(args, "nctx", None) is not None:
            raise UsageError("--nctx applies to a one-model server; set `nctx` per model in the manifest")
        if getattr(args, "local_path", False) or getattr(args, "huggingface", False) or getattr(args, "model_type", None):
            raise UsageError("-lp, -hf and -mt describe a single MODEL; they cannot be combined with -c")
        manifest = load_file(args.config)
    elif getattr(args, "words", None):
        manifest = build(one_model_manifest(args), origin="command line")
    else:
        raise UsageError("give a MODEL (e.g. `nexa server smollm2`) or -c FILE")
    # Flags act like NEXA_* variables, not like manifest edits, so a reload of the file
    # keeps them (and does not report them as server changes). main() exports them.
    env = flag_environment(args)
    if env:
        with _environ(env):
            manifest = build(manifest.model_dump(mode="json", exclude={"server"}) | {"server": _file_server(args)},
                             origin="command line")
    return manifest


def flag_environment(args: argparse.Namespace) -> dict[str, str]:
    values = {key: getattr(args, key, None) for key in ("host", "port", "http_server", "playground", "offline", "reload")}
    env = {}
    for key, value in values.items():
        if value is None or (value is False and key != "playground"):
            continue
        env[f"NEXA_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _file_server(args: argparse.Namespace) -> dict[str, Any]:
    """The manifest file's own server section (flags and NEXA_* are applied on top of it)."""
    if not args.config:
        return {}
    import yaml

    from gateway.manifest.load import substitute

    data = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    return substitute(data.get("server") or {})


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fetch_all(manifest: Manifest, offline: bool = False, verify: str = "never", repair: bool = False) -> None:
    sweep_partials(cache_root())  # what a killed pull left behind
    for spec in manifest.models:
        _, path = fetch_model(spec, offline=offline, verify=verify, repair=repair)
        log.info("model %s: %s", spec.name, path, extra={"event": "model_file", "model": spec.name, "path": str(path)})


def verify_all(manifest: Manifest) -> int:
    """`nexa check --verify`: hash each cached model file against its digest; never downloads.
    Prints one line per model; 1 if any file is missing or corrupt."""
    failed = 0
    for spec in manifest.models:
        try:
            _, path = fetch_model(spec, offline=True, verify="always")
        except FetchError as exc:
            failed += 1
            print(f"{spec.name}: FAILED: {exc}")
        else:
            print(f"{spec.name}: ok ({path})")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.command in ("schema", "plan"):
        if args.command == "plan":
            return gitops.plan(args)
        from gateway.api.table import openapi_document

        return gitops.schema(args, openapi_document)
    try:
        manifest = load_manifest(args)
        try:
            open_store(manifest.server.state)  # names the store and reads its ${VAR}s; connects nothing
        except ValueError as exc:
            raise ManifestError([f"server.state: {exc}"], args.config or "manifest") from None
        os.environ.update(flag_environment(args))  # the server worker and every reload see the flags
        if args.command == "check":
            names = ", ".join(spec.name for spec in manifest.models)
            print(f"{args.config or 'manifest'}: ok ({len(manifest.models)} models: {names})")
            for spec in manifest.models:
                if spec.type.value == "NLP" and spec.format.value == "gguf":
                    bound = "auto (nctx x the model's KV bytes per token)" if spec.prompt_cache is None else (
                        "off" if not spec.prompt_cache else spec.prompt_cache.human_readable())
                    kept = manifest.server.prompt_cache_dir
                    if kept and spec.prompt_cache != 0:
                        from backends.prompt_cache_disk import model_dir

                        bound += f", kept across restarts in {model_dir(kept, spec.name)}"
                    print(f"  {spec.name}: prompt_cache {bound}")
            return verify_all(manifest) if args.verify else 0
        setup_logging(manifest.server.log_level, manifest.server.log_format)
        if manifest.server.engine is not None:
            log.warning("server.engine (NEXA_ENGINE) is deprecated; it is now server.http_server (NEXA_HTTP_SERVER)",
                        extra={"event": "deprecated_setting"})
        # A pull hashes every cached file and fetches a corrupt one again; a start only makes sure
        # the files are there, and each load verifies per `server.verify`.
        pulling = args.command == "pull"
        fetch_all(manifest, offline=manifest.server.offline, verify="always" if pulling else "never", repair=pulling)
        if args.command == "pull":
            return 0
        serve = importlib.import_module(f"gateway.servers.{manifest.server.http_server}").serve
        code = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "backends")]
        watch_files = [] if args.config else [str(fetch(spec, offline=True)) for spec in manifest.models]
        serve(manifest, manifest_path=args.config, watch_files=watch_files,
              code_reload_paths=code if getattr(args, "reload", False) else None)
        return 0
    except UsageError as exc:
        parser.exit(2, f"nexa: error: {exc}\n")
    except ManifestError as exc:
        sys.stderr.write(exc.report())
        return 2
    except FetchError as exc:
        sys.stderr.write(f"nexa: {exc}\n")
        return 1
    except OSError as exc:  # a full disk outside a fetch (a lock file, the log) is still one line
        if exc.errno not in NO_SPACE:
            raise
        sys.stderr.write(f"nexa: no space left on device at {exc.filename or cache_root()}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
