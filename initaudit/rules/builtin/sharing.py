"""IA401: one Parameter reachable under several names."""

from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Iterator, List, Set, Tuple

from initaudit.core.records import TensorRecord
from initaudit.rules.registry import RuleContext, Violation, rule


def connected(names: Iterable[str], ties: Set[FrozenSet[str]]) -> bool:
    """Whether declared ``ties`` (pairs or sets of names) join all of ``names`` into one group."""
    names = list(names)
    group = {names[0]}
    changed = True
    while changed:
        changed = False
        for tie in ties:
            if tie & group and not tie <= group:
                group |= tie
                changed = True
    return set(names) <= group


def _owners(t: TensorRecord) -> Tuple[str, ...]:
    return tuple(name.rpartition(".")[0] for name in t.names)


@rule(
    "IA401",
    "shared-parameter",
    "warning",
    "One Parameter object is reachable under two or more names.",
    fix="unsafe",
    why_no_fix="a structural change: run with --unsafe-fixes to untie it",
)
def shared_parameter(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    # parameters of one module reused under several names are reported together
    groups: Dict[Tuple[str, ...], List[TensorRecord]] = {}
    for t in rec.parameters:
        if len(t.names) > 1:
            groups.setdefault(_owners(t), []).append(t)
    for owners, params in groups.items():
        names = [n for t in params for n in t.names]
        if all(connected(t.names, ctx.tied) for t in params):
            continue
        declared = all(connected(t.names, rec.declared_ties) for t in params)
        listed = ", ".join(f"'{n}'" for n in names)
        if declared:
            yield Violation(
                params[0].name,
                f"{listed} are one tensor, tied by the model's own declaration "
                "(Hugging Face's _tied_weights_keys, or get_input_embeddings() / get_output_embeddings())",
                severity="info",
                locations=names,
            )
            continue
        shared = {id(rec.module(o)) for o in owners}
        if len(shared) == 1 and rec.module(owners[0]) is not None:
            what = (
                f"module {params[0].module_type} is reachable as "
                + ", ".join(f"'{o}'" for o in dict.fromkeys(owners))
                + f": its parameter(s) {', '.join(t.attr for t in params)} are shared by every use"
            )
        else:
            what = "one Parameter is reachable under several names"
        hint = " ".join("--tied " + "=".join(t.names) for t in params)
        yield Violation(
            params[0].name,
            f"{what} ({listed}); every use updates the same weights. If separate layers were "
            f"meant, build one module per use; if the sharing is deliberate, declare it with {hint}",
            fix=None,
            locations=names,
        )


@rule(
    "IA402",
    "aliased-storage",
    "warning",
    "Distinct Parameters share memory.",
    fix="none",
    why_no_fix="memory shared by two Parameters is a structural choice; clone one of them",
)
def aliased_storage(ctx: RuleContext) -> Iterator[Violation]:
    seen: Set[str] = set()
    for t in ctx.recording.parameters:
        if not t.aliases or t.name in seen:
            continue
        names = [t.name] + [n for n in t.aliases if n not in seen]
        seen.update(names)
        listed = ", ".join(f"'{n}'" for n in names)
        yield Violation(
            t.name,
            f"distinct Parameters {listed} share memory (one was made from the other's .data, or "
            "as a view of it): an update to one silently changes the other, while the optimizer "
            "treats them as independent; give each its own storage (.clone()) or share the "
            "Parameter object itself",
            fix=None,
            locations=names,
        )
