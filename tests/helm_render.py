"""A renderer for the subset of Helm's Go templates that deploy/helm/nexa-gateway uses,
so the chart is tested where no `helm` binary exists (CI). Where `helm` is on PATH,
tests/test_gitops.py also renders with it and checks that both agree.

Supported: `{{ }}` with `{{-`/`-}}` trimming, comments, `define`/`include`, `if`/`else`,
`with`, pipelines, parenthesised sub-expressions, and the functions printf, trunc,
trimSuffix, quote, default, toYaml, toJson, indent, nindent, add, and, or, not.
Anything else raises, so a template that leaves the subset fails loudly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\(|\)|\||[^\s()|]+')


class TemplateError(Exception):
    pass


def _lex(text: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)], with trim markers applied to the neighbouring text."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in _ACTION.finditer(text):
        chunk = text[pos:match.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if match.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        body = match.group(2)
        if not (body.startswith("/*") and body.endswith("*/")):
            out.append(("action", body))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = text[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()) -> tuple[list, int, str | None]:
    """A node list up to one of the `stop` keywords; returns (nodes, next index, keyword met)."""
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(None, 1)[0]
        rest = value[len(word):].strip()
        if word in stop:
            return nodes, i, word
        if word in ("if", "with"):
            body, i, met = _parse(tokens, i, ("else", "end"))
            other: list = []
            if met == "else":
                other, i, met = _parse(tokens, i, ("end",))
            nodes.append((word, rest, body, other))
        elif word == "define":
            body, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("define", json.loads(rest), body))
        elif word in ("range", "template", "block", "else", "end"):
            raise TemplateError(f"unsupported or unbalanced action: {{{{ {value} }}}}")
        else:
            nodes.append(("expr", value))
    if stop:
        raise TemplateError(f"missing {{{{ end }}}} (wanted one of {stop})")
    return nodes, i, None


def _truthy(value: Any) -> bool:
    return bool(value) if value is not None else False


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, text: str) -> str:
    pad = " " * n
    return pad + str(text).replace("\n", "\n" + pad)


class Renderer:
    def __init__(self, chart_dir: Path, values: dict[str, Any] | None = None, release: str = "rel",
                 namespace: str = "default"):
        chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
        base = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
        self.root = {
            "Values": _merge(base, values or {}),
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion", "")},
        }
        self.templates = sorted((chart_dir / "templates").glob("*"))
        self.defines: dict[str, list] = {}
        for path in self.templates:
            if path.suffix == ".tpl":
                self._collect(_parse(_lex(path.read_text()))[0])

    def _collect(self, nodes: list) -> None:
        for node in nodes:
            if node[0] == "define":
                self.defines[node[1]] = node[2]

    def render(self) -> dict[str, str]:
        """{template file name: rendered text} for every .yaml template."""
        out = {}
        for path in self.templates:
            if path.suffix == ".yaml":
                nodes = _parse(_lex(path.read_text()))[0]
                self._collect(nodes)
                out[path.name] = self._run(nodes, self.root)
        return out

    def documents(self) -> list[dict[str, Any]]:
        """Every rendered Kubernetes object, parsed."""
        docs = []
        for text in self.render().values():
            docs += [d for d in yaml.safe_load_all(text) if d]
        return docs

    # -- evaluation ------------------------------------------------------------------------

    def _run(self, nodes: list, dot: Any) -> str:
        out = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "expr":
                value = self._pipeline(node[1], dot)
                out.append("" if value is None else _format(value))
            elif kind in ("if", "with"):
                value = self._pipeline(node[1], dot)
                if _truthy(value):
                    out.append(self._run(node[2], value if kind == "with" else dot))
                else:
                    out.append(self._run(node[3], dot))
        return "".join(out)

    def _pipeline(self, text: str, dot: Any) -> Any:
        tokens = _TOKEN.findall(text)
        value, pos = self._pipe(tokens, 0, dot)
        if pos != len(tokens):
            raise TemplateError(f"cannot parse {text!r}")
        return value

    def _pipe(self, tokens: list[str], pos: int, dot: Any) -> tuple[Any, int]:
        value, pos = self._command(tokens, pos, dot, None, piped=False)
        while pos < len(tokens) and tokens[pos] == "|":
            value, pos = self._command(tokens, pos + 1, dot, value, piped=True)
        return value, pos

    def _command(self, tokens: list[str], pos: int, dot: Any, piped_value: Any, piped: bool) -> tuple[Any, int]:
        args: list[Any] = []
        head = tokens[pos]
        pos_after = pos
        if head in FUNCTIONS or head == "include":
            pos_after += 1
            while pos_after < len(tokens) and tokens[pos_after] not in ("|", ")"):
                value, pos_after = self._operand(tokens, pos_after, dot)
                args.append(value)
            if piped:
                args.append(piped_value)
            if head == "include":
                return self._run(self.defines[args[0]], args[1]), pos_after
            return FUNCTIONS[head](*args), pos_after
        if piped:
            raise TemplateError(f"cannot pipe into {head!r}")
        return self._operand(tokens, pos, dot)

    def _operand(self, tokens: list[str], pos: int, dot: Any) -> tuple[Any, int]:
        token = tokens[pos]
        if token == "(":
            value, pos = self._pipe(tokens, pos + 1, dot)
            if tokens[pos] != ")":
                raise TemplateError("unbalanced parenthesis")
            return value, pos + 1
        if token.startswith('"'):
            return json.loads(token), pos + 1
        if re.fullmatch(r"-?\d+", token):
            return int(token), pos + 1
        if token in ("true", "false"):
            return token == "true", pos + 1
        if token == ".":
            return dot, pos + 1
        if token.startswith(".") or token.startswith("$."):
            value = self.root if token.startswith("$") else dot
            for part in token.lstrip("$").strip(".").split("."):
                value = value.get(part) if isinstance(value, dict) else None
            return value, pos + 1
        raise TemplateError(f"unsupported operand {token!r}")


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise TemplateError("a map or list printed without toYaml")
    return str(value)


def _default(default: Any, value: Any = None) -> Any:
    return value if _truthy(value) else default


def _and(*values: Any) -> Any:
    for value in values:
        if not _truthy(value):
            return value
    return values[-1]


def _or(*values: Any) -> Any:
    for value in values:
        if _truthy(value):
            return value
    return values[-1]


FUNCTIONS = {
    "printf": lambda fmt, *args: re.sub(r"%[sdv]", "{}", fmt).format(*args),
    "trunc": lambda n, s: str(s)[:n],
    "trimSuffix": lambda suffix, s: str(s)[:-len(suffix)] if str(s).endswith(suffix) else str(s),
    "quote": lambda value: json.dumps(_format(value) if value is not None else ""),
    "default": _default,
    "toYaml": _to_yaml,
    "toJson": lambda value: json.dumps(value, separators=(",", ":")),
    "indent": lambda n, text: _indent(n, text),
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "add": lambda *numbers: sum(int(n) for n in numbers),
    "and": _and,
    "or": _or,
    "not": lambda value: not _truthy(value),
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's value merge: maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
