"""What a new manifest changes: the diff that a reload applies (and `nexa plan` prints).

A model is *replaced* (new weights loaded) only when a field that affects
loading changed; fields that only affect how requests are handled are updated
in place, so renaming an alias never reloads the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.manifest import LIVE, Manifest, ModelSpec

# Fields applied to a loaded model without reloading it: those schemas/manifest.py marks `LIVE`.
# Every other field (source, format, device, nctx, options, replicas, ...) needs new weights.
LIVE_FIELDS = frozenset(name for name, info in ModelSpec.model_fields.items() if LIVE in info.metadata)


@dataclass
class Plan:
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    replace: list[str] = field(default_factory=list)
    update: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    server_changes: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.add or self.remove or self.replace or self.update or self.server_changes)

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in vars(self).items()}

    def summary(self) -> str:
        parts = [f"{k}: {', '.join(v)}" for k, v in vars(self).items() if v and k != "unchanged"]
        return "; ".join(parts) or "no changes"


def needs_reload(old: ModelSpec, new: ModelSpec) -> bool:
    a = old.model_dump(exclude=LIVE_FIELDS)
    b = new.model_dump(exclude=LIVE_FIELDS)
    return a != b


def diff(old: Manifest, new: Manifest) -> Plan:
    plan = Plan()
    before = {m.name: m for m in old.models}
    after = {m.name: m for m in new.models}
    for name, spec in after.items():
        if name not in before:
            plan.add.append(name)
        elif needs_reload(before[name], spec):
            plan.replace.append(name)
        elif before[name] != spec:
            plan.update.append(name)
        else:
            plan.unchanged.append(name)
    plan.remove = [name for name in before if name not in after]
    old_server = old.server.model_dump()
    new_server = new.server.model_dump()
    plan.server_changes = sorted(k for k in new_server if old_server.get(k) != new_server[k])
    return plan
