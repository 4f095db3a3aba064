"""``audit()``: the Python API that the CLI, and later the pytest plugin, are thin layers over."""

from __future__ import annotations

import contextlib
import copy
import random
import sys
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, FrozenSet, Iterable, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import nn

from initaudit.analysis.model import analyze
from initaudit.fixing.fixer import needs_data, repair, values_kept
from initaudit.gate import suppress
from initaudit.load import inputs, trace
from initaudit.load.model import check_devices, resolve_device, unwrap
from initaudit.record.inspector import inspect
from initaudit.record.setup import materialize_lazy, on_device
from initaudit.report.report import Report
from initaudit.rules.engine import rule_options, run_rules
from initaudit.rules.registry import resolve_selection

if TYPE_CHECKING:
    from initaudit.analysis.sweep import SweepResult
    from initaudit.core.progress import Progress
    from initaudit.gate.config import Settings

Tie = Union[str, Tuple[str, str], Sequence[str]]


def parse_ties(tied: Optional[Iterable[Tie]]) -> Set[FrozenSet[str]]:
    """``["a.weight=b.weight"]`` or ``[("a.weight", "b.weight")]`` -> ``{frozenset({...})}``."""
    ties: Set[FrozenSet[str]] = set()
    for tie in tied or ():
        names = tie.split("=") if isinstance(tie, str) else list(tie)
        names = [n.strip() for n in names if n.strip()]
        if len(names) < 2:
            raise ValueError(f"a tie names two or more parameters (a.weight=b.weight), not {tie!r}")
        ties.add(frozenset(names))
    return ties


@dataclass(frozen=True)
class AuditRun:
    """Everything an audit runs with but the model and its input.

    One value holds them so that the audit after a fix runs with exactly the options of the
    first (a model audited ``params_only`` because it is too large to run is not run by the
    second audit either), and so that a new option cannot be forgotten on the way.
    """

    loss: Optional[Callable[[Any, Any], torch.Tensor]] = None
    device: Union[str, torch.device, None] = None
    select: Optional[Tuple[str, ...]] = None
    ignore: Optional[Tuple[str, ...]] = None
    seed: int = 0
    tied: Optional[Tuple[Tie, ...]] = None
    options: Optional[Mapping[str, Any]] = None
    per_parameter_ignores: Optional[Mapping[str, Sequence[str]]] = None
    input_shape: Optional[Sequence[int]] = None
    batch_size: int = inputs.DEFAULT_BATCH
    target: Optional[str] = None
    classes: Optional[int] = None
    labels: Any = None
    optimizer: Any = None
    steps: int = 1
    params_only: bool = False
    no_backward: bool = False
    progress: Optional["Progress"] = None


def audit(
    model: nn.Module,
    example_input: Any = None,
    *,
    loss: Optional[Callable[[Any, Any], torch.Tensor]] = None,
    device: Union[str, torch.device, None] = None,
    select: Optional[Iterable[str]] = None,
    ignore: Optional[Iterable[str]] = None,
    seed: int = 0,
    tied: Optional[Iterable[Tie]] = None,
    options: Optional[Mapping[str, Any]] = None,
    per_parameter_ignores: Optional[Mapping[str, Sequence[str]]] = None,
    input_shape: Optional[Sequence[int]] = None,
    batch_size: int = inputs.DEFAULT_BATCH,
    target: Optional[str] = None,
    classes: Optional[int] = None,
    labels: Any = None,
    optimizer: Any = None,
    steps: int = 1,
    fix: bool = False,
    unsafe_fixes: bool = False,
    dry_run: bool = False,
    fail_on: str = "warning",
    params_only: bool = False,
    no_backward: bool = False,
    progress: Optional["Progress"] = None,
) -> Report:
    """Audit ``model``'s initialization and return a :class:`~initaudit.report.report.Report`.

    ``params_only=True`` runs no forward at all (the value rules only, no input needed);
    ``no_backward=True`` skips the backward (no gradient rules). The report's notes say which
    rules were skipped.

    With ``fix=True``, repair the findings that have a safe fix in place (and, with
    ``unsafe_fixes=True``, the structural ones), audit again with exactly the same options,
    and return the report of that second audit: the model as it is now. What the fix did is
    ``report.fix``, a :class:`~initaudit.fixing.fixer.FixResult` (``.before`` is the first
    audit's report, then the changes, the LSUV factors and what was not fixed). The fix acts
    on the findings at or above ``fail_on`` that are not the consequence of another; an info
    only with ``fail_on="info"``, and never one a rule lowered to info because here it is a
    recipe that trains (:func:`initaudit.fixing.fixer.to_repair`). With ``dry_run=True`` as
    well, the fix and the audit after it are made and reported, and then the model's values
    are put back: ``report.fix`` says what would change, and the model is as it was.

    ``example_input`` is a tensor, a tuple (positional arguments) or a dict (keyword
    arguments); when ``None`` it is inferred from the first layer (or built with
    ``input_shape``). ``loss(output, example_input)`` returns a scalar; by default a seeded
    random projection of the output. ``device=None`` audits where the model is; another
    device moves the model there for the audit and back afterwards. The model is left as
    it was found: parameters, buffers, ``.grad``, training flags and RNG state.

    ``classes`` declares that the output is logits over that many classes (a Hugging Face
    output's ``logits`` is read without it): the loss at init is then compared with ln C (IA207).
    ``labels`` (the batch's class labels, an integer tensor; a dict input's ``"labels"`` is read
    without it) adds their loss at init: well below what the same logits score on shuffled
    labels is a leak, and imbalanced classes get the output-bias advice (IA207).

    ``optimizer`` (an optimizer over the model's parameters, a function of the parameters that
    builds one, or a spec like ``"AdamW(lr=3e-4)"``) takes ``steps`` (1 to 3) steps on the
    example batch with the audit's loss, records the losses and each parameter's relative
    update, and each layer's output change on the batch, and undoes them: parameters, buffers,
    optimizer state and RNG as they were (IA701, IA702).

    ``per_parameter_ignores`` maps a glob on qualified names to codes suppressed there;
    a module class's ``__initaudit_ignore__`` suppresses codes for its parameters. Suppressed
    findings are in ``report.suppressed``, not ``report.findings``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"audit() takes an nn.Module, not {type(model).__name__}")
    run = AuditRun(
        loss=loss, device=device, select=_tuple(select), ignore=_tuple(ignore), seed=seed, tied=_tuple(tied),
        options=options, per_parameter_ignores=per_parameter_ignores, input_shape=input_shape,
        batch_size=batch_size, target=target, classes=classes, labels=labels, optimizer=optimizer, steps=steps,
        params_only=params_only, no_backward=no_backward, progress=progress,
    )
    if not 1 <= steps <= 3:
        raise ValueError(f"steps={steps}: the audit takes 1 to 3 optimizer steps")
    report, x = audit_once(model, example_input, run)
    if not fix:
        return report
    return fix_and_audit(model, report, x, run, unsafe=unsafe_fixes, fail_on=fail_on, dry_run=dry_run)


def fix(
    model: nn.Module,
    report: Report,
    example_input: Any = None,
    *,
    unsafe: bool = False,
    lsuv: bool = True,
    fail_on: str = "warning",
    dry_run: bool = False,
    **audit_options: Any,
) -> Report:
    """Repair ``report``'s findings on ``model`` in place, then audit it again.

    ``audit_options`` are :func:`audit`'s (without ``fix``); the audit after the repair runs
    with them, on ``example_input`` (inferred when ``None``, unless ``params_only``).
    ``lsuv=False`` leaves the signal findings to the caller; ``fail_on`` and ``dry_run`` are
    as :func:`audit`'s.
    Returns that audit's report, with what the repair did as ``report.fix``.
    """
    unknown = sorted(set(audit_options) - {f.name for f in fields(AuditRun)})
    if unknown:
        raise TypeError(f"fix() got unknown audit option(s) {unknown}")
    for key in ("select", "ignore", "tied"):
        audit_options[key] = _tuple(audit_options.get(key))
    run = AuditRun(**audit_options)
    x = example_input
    if x is None and lsuv and not run.params_only and needs_data(report, fail_on):
        x = inputs.make_input(model, run.input_shape, batch=run.batch_size, seed=run.seed)
    return fix_and_audit(model, report, x, run, unsafe=unsafe, lsuv=lsuv, fail_on=fail_on, dry_run=dry_run)


def fix_and_audit(model: nn.Module, report: Report, example_input: Any, run: AuditRun, *, unsafe: bool,
                  lsuv: bool = True, fail_on: str = "warning", dry_run: bool = False) -> Report:
    """The fix, then the audit again with the same ``run``: the one loop both entry points use.
    A dry run makes both on the model and then puts its values back (a structural fix, which
    changes modules, on a deep copy instead)."""
    model, _ = unwrap(model)
    # the repair runs where the parameters live, so that it lasts: on their own device and dtype
    x = inputs.to_device(example_input, inputs.model_device(model)) if example_input is not None else None
    target = model
    if dry_run and unsafe:
        target = copy.deepcopy(model)
    with values_kept(target) if dry_run else contextlib.nullcontext():
        repaired = repair(target, report, x, unsafe=unsafe, seed=run.seed, lsuv=lsuv, fail_on=fail_on)
        after, _ = audit_once(target, x, run)
    if dry_run:
        repaired.model = None  # nothing was fixed: there is no fixed model to save
        repaired.dry_run = True
    after.target = report.target
    after.fix = repaired
    return after


def audit_once(model: nn.Module, example_input: Any, run: AuditRun) -> Tuple[Report, Any]:
    """One audit: record, run the rules, split off what is suppressed. Returns the report and
    the input it ran on (on the audit's device; ``None`` when ``params_only``)."""
    started = time.perf_counter()
    model, notes = unwrap(model)
    check_devices(model, run.device)
    rules = resolve_selection(run.select, run.ignore)
    available = {"values"} | ({"forward"} if not run.params_only else set()) | (
        {"backward"} if not (run.params_only or run.no_backward) else set())
    skipped = [r.code for r in rules if r.needs not in available]
    rules = [r for r in rules if r.needs in available]
    ties = parse_ties(run.tied)
    rule_options(rules, run.options)  # reject unknown options before running anything
    dev = resolve_device(run.device, model)
    if skipped:
        what = "no forward (--params-only)" if run.params_only else "no backward (--no-backward)"
        notes.append(f"{what}: skipped {', '.join(skipped)}")
    with on_device(model, dev), trace.traces_kept():
        if run.params_only:
            x = None
        elif example_input is None or run.input_shape is not None:
            x = inputs.make_input(model, run.input_shape, batch=run.batch_size, seed=run.seed)
        else:
            inputs.check_input(example_input)
            x = example_input
        if x is not None:
            x = inputs.to_device(x, dev)
            materialized = materialize_lazy(model, x)
            if materialized:
                trace.forget_traces()
            notes += materialized
        recording = inspect(model, x, loss=run.loss, seed=run.seed, run_forward=not run.params_only,
                            run_backward=not (run.params_only or run.no_backward), progress=run.progress,
                            classes=run.classes, labels=run.labels, optimizer=run.optimizer, steps=run.steps)
        notes += recording.notes
    if run.progress is not None:
        run.progress.phase("rules")
    analysis = analyze(recording)
    findings, suppressed = suppress.split(run_rules(recording, rules, run.options, ties, analysis), recording,
                                          run.per_parameter_ignores)
    report = Report(
        options=dict(run.options or {}),  # the rule options it ran with, for the rule descriptions
        notes=notes,
        findings=findings,
        suppressed=suppressed,
        recording=recording,
        target=run.target,
        device=str(dev),
        torch_version=torch.__version__,
        seconds=time.perf_counter() - started,
        rules=[r.code for r in rules],
        analysis=analysis,
    )
    return report, x


def _tuple(values: Optional[Iterable[Any]]) -> Optional[Tuple[Any, ...]]:
    """A selection or tie list as a tuple (a generator is read once, and a run is frozen)."""
    if values is None:
        return None
    return (values,) if isinstance(values, str) else tuple(values)


def audit_target(
    spec: str,
    settings: Optional["Settings"] = None,
    *,
    factory_args: Optional[Mapping[str, Any]] = None,
    input_shape: Optional[Sequence[int]] = None,
    batch_size: int = inputs.DEFAULT_BATCH,
    fix: bool = False,
    unsafe_fixes: bool = False,
    dry_run: bool = False,
    checkpoint: Optional[str] = None,
    params_only: bool = False,
    no_backward: bool = False,
    progress: Optional["Progress"] = None,
    classes: Optional[int] = None,
    optimizer: Any = None,
    steps: int = 1,
) -> Report:
    """Build the model of ``path/to/file.py:factory`` (or ``pkg.mod:factory``) and audit it.

    The global RNGs are seeded with ``settings.seed`` before the factory runs, so that one
    seed gives one model; the model is moved to ``settings.device`` (default: where the
    factory put it).
    """
    from initaudit.gate.config import Settings
    from initaudit.load.target import load_checkpoint, load_target

    settings = settings or Settings()
    if progress is not None:
        progress.phase("building")
    seed_everything(settings.seed)
    built = load_target(spec, dict(factory_args or {}))
    if checkpoint:
        load_checkpoint(built.model, checkpoint)
    # the model is ours (the factory just built it): move it for good, not back and forth
    model = built.model.to(resolve_device(settings.device, built.model))
    report = audit(
        model,
        built.example_input,
        loss=built.loss,
        input_shape=input_shape,
        batch_size=batch_size,
        target=spec,
        classes=classes if classes is not None else built.classes,
        labels=built.labels,
        optimizer=optimizer if optimizer is not None else built.optimizer,
        steps=steps,
        fix=fix,
        unsafe_fixes=unsafe_fixes,
        dry_run=dry_run,
        fail_on=settings.fail_on,
        params_only=params_only,
        no_backward=no_backward,
        progress=progress,
        **{**settings.audit_options(), "device": None},
    )
    for r in (report, report.fix.before) if report.fix is not None else (report,):
        r.source, r.line = built.source, built.line
    return report


def sweep(
    spec: str,
    name: str,
    values: Sequence[float],
    settings: Optional["Settings"] = None,
    *,
    factory_args: Optional[Mapping[str, Any]] = None,
    input_shape: Optional[Sequence[int]] = None,
    batch_size: int = inputs.DEFAULT_BATCH,
    progress: Optional["Progress"] = None,
    optimizer: Any = None,
    steps: int = 1,
) -> "SweepResult":
    """Build and audit the model of ``spec`` once per value of its factory argument ``name``
    (the same seed each time), and fit how each layer's output RMS at init scales with it
    (:func:`initaudit.analysis.sweep.layer_trends`): the coordinate check of muP, with a verdict.
    With an optimizer (or the factory's), the same ``steps`` are taken at every value, and each
    layer's output change over them is fitted too (:func:`~initaudit.analysis.sweep.update_trends`)."""
    from initaudit.analysis.sweep import SweepResult, layer_trends, update_trends

    reports = [audit_target(spec, settings, factory_args={**dict(factory_args or {}), name: value},
                            input_shape=input_shape, batch_size=batch_size, progress=progress,
                            optimizer=optimizer, steps=steps)
               for value in values]
    recordings = [r.recording for r in reports]
    outputs = [r.analysis.output_layer for r in reports]
    trends = layer_trends(values, recordings, outputs)
    updates = update_trends(values, recordings, outputs) if all(r.step_output_changes for r in recordings) else []
    return SweepResult(name, list(values), reports, trends, updates)


def seed_everything(seed: int) -> None:
    """Seed the generators a factory may draw its init from: torch, ``random``, NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
