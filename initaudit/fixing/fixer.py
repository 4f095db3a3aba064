"""Fix in place: repair what the audit found, then audit again.

What the fixer does with a finding is its rule's declared fix safety (``@rule(fix=...)``,
:attr:`~initaudit.rules.registry.Rule.fix`). Every safe fix is the finding's own ``fix``:
Python on ``model`` that changes values only (``torch.nn.init`` calls, slices of gate
biases), its random draws from a local generator seeded with the run's seed (:func:`seeded`);
where the rule's fix is a re-draw and the parameter lies in a Hugging Face model, that
model's own ``_init_weights`` instead (:func:`own_init_code`). The fixer runs exactly those
lines, so ``--emit-code`` prints what was applied and reproduces it bit for bit. Findings of
data rules (the signal rules IA202, IA203, IA206) are then repaired with data
(:func:`rescale`): LSUV (Mishkin & Matas 2016) on the main path, then what is too large for
the stream scaled down; the factors are written out as explicit scales. Unsafe, structural
fixes (IA401: untie a shared parameter) run only when asked for. Every other finding is
listed as unfixed, with its rule's reason.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import itertools
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

import torch
from torch import nn

from initaudit.analysis.graph import accessor
from initaudit.analysis.roles import inside_branch, main_path
from initaudit.core import knowledge
from initaudit.core.files import write_atomically
from initaudit.core.numbers import short_number
from initaudit.record import transfer
from initaudit.record.hooks import CallRecorder
from initaudit.record.state import RNGState, preserved, seed_torch
from initaudit.record.walk import call_model, names_by_id
from initaudit.report.report import Report, fails
from initaudit.rules.engine import Finding
from initaudit.rules.registry import DEFAULT_WHY_NO_FIX, Rule, load_rules

LSUV_TOLERANCE = 0.1
LSUV_ITERATIONS = 10

# the rules whose fix re-draws a weight: where the model has its own initializer (a Hugging Face
# model's ``_init_weights``), it re-draws the module instead
REDRAW_RULES = frozenset({"IA101", "IA102", "IA103", "IA104", "IA105", "IA201"})
# the model's own initializer is the fix only if it moves the std out of this band around the
# current one (it would otherwise re-draw the same scale that was found wrong)
OWN_INIT_BAND = (0.8, 1.25)

# the rules whose fix scales a tensor by a factor measured on the model's output (IA207: the head by
# the logits' spread): measured before any fix, that factor is stale once another fix has changed
# the layers below it, and the output is measured again instead (:func:`remeasured_head`)
MEASURED_ON_OUTPUT = frozenset({"IA207"})

# the torch.nn.init functions that draw random numbers (each takes ``generator=``)
RANDOM_INITS = frozenset({"uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
                          "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_"})


@dataclass
class Change:
    """One parameter a fix changed."""

    name: str
    code: str
    old_std: Optional[float]
    new_std: Optional[float]
    why: str = ""  # the rule's name, or what the data-dependent fix aims at


@dataclass
class FixResult:
    """What a fix did: the report it repaired, and each change."""

    before: Report  # the audit before the fix (the audit after it is the report holding this)
    lines: List[str]  # the safe fixes and LSUV scales, as run on `model`
    changes: List[Change]
    lsuv: Dict[str, float] = field(default_factory=dict)  # layer -> total scale factor
    unsafe: List[str] = field(default_factory=list)  # structural changes made
    unfixed: List[Tuple[Finding, str]] = field(default_factory=list)  # and why
    tied: List[str] = field(default_factory=list)  # a changed tensor's other uses, in words
    model: Optional[nn.Module] = None  # the model, fixed in place
    seed: int = 0  # of the generator the fixes drew from
    dry_run: bool = False  # made, audited and then undone: what a fix would change

    def table(self) -> str:
        from tabulate import tabulate

        rows = [[c.name, c.code, _num(c.old_std), _num(c.new_std), c.why] for c in self.changes]
        text = tabulate(rows, headers=["parameter", "finding", "old std", "new std", "why"], tablefmt="simple",
                        disable_numparse=True) if rows else "Nothing was changed."
        if self.lsuv:
            text += "\n\nLSUV scale factors (Mishkin & Matas 2016): " + ", ".join(
                f"{name} x{factor:.4g}" for name, factor in self.lsuv.items())
        if self.tied:
            text += "\n\nTied parameters (one tensor, several uses):\n" + "\n".join(f"  {t}" for t in self.tied)
        if self.unsafe:
            text += "\n\nStructural (unsafe) fixes: " + "; ".join(self.unsafe)
        if self.unfixed:
            text += "\n\nNot fixed:\n" + "\n".join(f"  {f.code} {f.location}: {why}" for f, why in self.unfixed)
        return text

    def emit_code(self) -> str:
        """A standalone ``init_weights(model, seed)`` that reproduces the fixes by name and bit
        for bit: one ``torch.no_grad()`` block (a fix line's own is taken off), the random draws
        from a local ``torch.Generator`` seeded as the fix's was (the caller's RNG is not
        touched), ``math`` imported only when a line uses it."""
        body = "\n".join("        " + line for block in self.lines for line in _without_no_grad(block).splitlines())
        imports = ("import math\n\n" if "math." in body else "") + "import torch\nfrom torch import nn\n\n\n"
        draws = "generator=generator" in body
        own = "own_init(model, " in body
        return (
            imports
            + (OWN_INIT_HELPER + "\n\n" if own else "")
            + f"def init_weights(model: nn.Module{', seed: int = ' + str(self.seed) if draws or own else ''}) -> None:\n"
            '    """Re-initialize what initaudit found (generated by initaudit --emit-code)."""\n'
            + ("    # the draws of the fix, in its order, from a generator of their own on the model's device\n"
               "    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)\n"
               if draws else "")
            + ("    # the model's own _init_weights draws from the global RNG: seeded here, restored afterwards\n"
               "    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == 'cuda'})\n"
               "    with torch.no_grad(), torch.random.fork_rng(devices=cuda):\n"
               "        torch.manual_seed(seed)\n" if own else "    with torch.no_grad():\n")
            + (body if body.strip() else "        pass")
            + "\n"
        )


def _without_no_grad(block: str) -> str:
    """``block`` with a ``with torch.no_grad():`` of its own taken off (its body dedented, or
    its one-line body split at ``; ``): the emitted function holds one such block for all."""
    kept = []
    lines = block.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("with torch.no_grad():"):
            rest = line[len("with torch.no_grad():"):].strip()
            if rest:
                kept += rest.split("; ")
            else:
                index += 1
                while index < len(lines) and lines[index].startswith("    "):
                    kept.append(lines[index][4:])
                    index += 1
                continue
        else:
            kept.append(line)
        index += 1
    return "\n".join(kept)


def seeded(code: str) -> str:
    """``code`` with ``generator=generator`` added to each call of a random ``nn.init``
    function (:data:`RANDOM_INITS`) that does not pass one: the fix draws from a generator of
    its own, so that ``--emit-code`` reproduces it exactly and the user's RNG stays as it was.
    The text is edited at the calls' closing parentheses, so comments and layout stay."""
    tree = ast.parse(code)
    ends = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RANDOM_INITS
                and ast.unparse(node.func.value) in ("nn.init", "torch.nn.init")
                and not any(k.arg == "generator" for k in node.keywords)):
            ends.append((node.end_lineno, node.end_col_offset, bool(node.args or node.keywords)))
    lines = code.split("\n")
    for lineno, col, has_args in sorted(ends, reverse=True):  # last first: earlier offsets stay valid
        line = lines[lineno - 1]
        # end_col_offset counts UTF-8 bytes
        raw = line.encode()
        cut = len(raw[: col - 1].decode())
        lines[lineno - 1] = line[:cut] + (", " if has_args else "") + "generator=generator" + line[cut:]
    return "\n".join(lines)


def fix_generator(model: nn.Module, seed: int) -> torch.Generator:
    """The generator the fixes draw from: on the device of the model's first parameter (the
    emitted code makes the same one), seeded with ``seed``."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    return torch.Generator(device=device).manual_seed(seed)


# a std that is missing or not finite leaves its cell empty
_num = functools.partial(short_number, digits=4)


def _namespace(model: nn.Module, generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    return {"model": model, "nn": nn, "torch": torch, "math": math, "generator": generator}


def _std(model: nn.Module, name: str) -> Optional[float]:
    try:
        t = model.get_parameter(name)
    except AttributeError:
        try:
            t = model.get_buffer(name)
        except AttributeError:
            return None
    if not t.is_floating_point() or t.numel() == 0:
        return None
    return float(t.detach().double().std(correction=0))


def fix_level(fail_on: str = "warning") -> str:
    """The lowest severity a fix acts on: ``fail_on``, but warning for ``never`` (which changes
    the exit code, not what is wrong)."""
    return "warning" if fail_on == "never" else fail_on


def to_repair(report: Report, fail_on: str = "warning") -> List[Finding]:
    """The findings a fix acts on: at or above :func:`fix_level`; not a consequence of another
    (``caused_by``), which its root's repair removes; and never a finding its rule lowered to
    info because here it is a recipe that trains (a LoRA B, a zero residual end, a small head,
    a normalized branch). An info of a rule that is info by default (IA501's forget bias) is a
    recommendation, repaired with ``fail_on="info"``."""
    level = fix_level(fail_on)
    rules = load_rules()
    return [f for f in report.findings if fails(f.severity, level) and not f.caused_by
            and not (f.severity == "info" and f.code in rules and rules[f.code].severity != "info")]


def needs_data(report: Report, fail_on: str = "warning") -> bool:
    """Whether repairing ``report`` takes the example batch (LSUV for the signal findings)."""
    rules = load_rules()
    return any(fix_safety(rules, f.code)[0] == "data" for f in to_repair(report, fail_on))


def lsuv_layers(report: Report) -> Set[str]:
    """The layers LSUV may scale: those on the model's main path (not inside a residual branch,
    whose small output is the recipe, nor right before a normalization, which rescales it
    anyway), neither the output layer (its scale sets the logits: scaling it to unit output
    variance is what makes a regression head diverge) nor frozen; every name of each."""
    rec = report.recording
    head = report.analysis.output_layer
    frozen = {t.module for t in rec.parameters if t.attr == "weight" and not t.requires_grad}
    # a normalization with a gain is scaled through its gain: after a norm, the gain alone sets
    # the signal's size (a gain drawn small, as BatchNorm weights N(0, 0.02), shrinks it at every norm)
    gains = {t.module for t in rec.parameters if t.attr == "weight" and t.requires_grad and t.floating}
    return {name for m in rec.modules if m.first_call is not None
            and (m.kind == knowledge.LAYER or (m.kind == knowledge.NORM and set(m.names) & gains))
            and main_path(rec, m.first_call) and head not in m.names and not frozen & set(m.names)
            for name in m.names}


def aliases(model: nn.Module) -> Dict[str, List[str]]:
    """Every parameter name of ``model`` -> all the names of its tensor (itself included)."""
    by_tensor: Dict[int, List[str]] = {}
    named = list(model.named_parameters(remove_duplicate=False))
    for name, p in named:
        by_tensor.setdefault(id(p), []).append(name)
    return {name: by_tensor[id(p)] for name, p in named}


def branch_ends(report: Report) -> Set[str]:
    """The layers whose output is added to a residual stream (the end of each residual branch,
    :attr:`~initaudit.core.records.TensorRecord.branch`), trainable and not feeding a
    normalization (whose gain, not the layer's scale, sets what the branch adds); every name
    of each."""
    rec = report.recording
    ends = {t.module for t in rec.parameters
            if t.attr == "weight" and t.branch == "residual" and t.requires_grad and t.feeds != "norm"}
    return {name for m in rec.modules if m.kind == knowledge.LAYER and set(m.names) & ends for name in m.names}


def branch_interior(report: Report) -> Set[str]:
    """The layers inside a residual branch that do not end it, trainable; every name of each."""
    rec = report.recording
    ends = branch_ends(report)
    frozen = {t.module for t in rec.parameters if t.attr == "weight" and not t.requires_grad}
    return {name for m in rec.modules if m.kind == knowledge.LAYER and m.first_call is not None
            and inside_branch(rec, m.first_call) and not set(m.names) & (ends | frozen) for name in m.names}


def _frozen(model: nn.Module, names: List[str]) -> List[str]:
    """Those of ``names`` that are parameters the optimizer will not train."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return [n for n in names if n in params and not params[n].requires_grad]


def repair(
    model: nn.Module,
    report: Report,
    example_input: Any = None,
    *,
    unsafe: bool = False,
    seed: int = 0,
    lsuv: bool = True,
    fail_on: str = "warning",
) -> FixResult:
    """Repair ``report``'s findings on ``model`` in place; returns what was done.

    Acts on the findings at or above ``fail_on`` (:func:`to_repair`: never a consequence, which
    its root's repair removes, nor a recipe its rule lowered to info). Runs under ``torch.no_grad()`` on each
    parameter's own device and dtype, drawing from a generator seeded with ``seed`` (and the
    global RNG, for a model's own ``_init_weights``, seeded too and restored afterwards).
    Parameters that no such finding names, and frozen ones, are not touched; a tied tensor is
    changed once. The signal findings are repaired on ``example_input`` (:func:`rescale`);
    without an input (an audit of the parameters alone) they are left unfixed. Auditing the
    model again is the caller's (:func:`initaudit.api.audit`).
    """
    lines: List[str] = []
    changes: List[Change] = []
    unfixed: List[Tuple[Finding, str]] = []
    structural: List[str] = []
    tied: List[str] = []
    rules = load_rules()
    names_of = aliases(model)
    changed_by: Dict[str, str] = {}  # a tensor's first name -> the finding whose fix changed it
    rng = RNGState()
    generator = fix_generator(model, seed)
    try:
        seed_torch(seed)  # for what draws from the global RNG: reset_parameters of an untied copy
        acting = to_repair(report, fail_on)
        data = [f for f in acting if fix_safety(rules, f.code)[0] == "data"]
        # measured on the output: after every other fix, which may change what it measured
        measured = [f for f in acting if f.code in MEASURED_ON_OUTPUT and f.fix]
        deferred: List[Finding] = []
        for f in [f for f in acting if f not in measured] + measured:
            if f in measured and (changes or (data and lsuv)) and example_input is not None:
                deferred.append(f)  # the layers below it change first: measured again after them
                continue
            safety, why = fix_safety(rules, f.code)
            names = [n for n in dict.fromkeys([f.location, *f.locations])]
            frozen = _frozen(model, names)
            if frozen and safety in ("safe", "unsafe"):
                unfixed.append((f, f"{', '.join(frozen)} is frozen (requires_grad=False): not the fix's to change"))
            elif safety == "safe" and f.fix and _already_changed(names, names_of, changed_by):
                # a tied tensor is changed once: for the first use found wrong
                unfixed.append((f, f"already changed by the fix of {_already_changed(names, names_of, changed_by)}: "
                                   "one tensor, tied to another use"))
            elif safety == "safe" and f.fix:
                own = own_init_code(model, f, names)
                before = {n: _std(model, n) for n in names}
                code = own if own is not None else seeded(f.fix)
                run_fix_line(model, (OWN_INIT_HELPER if own is not None else "") + code, f"{f.code} {f.location}",
                             generator)
                lines.append(f"# {f.code} {f.rule}: {f.location}"
                             + (" (the model's own initializer, its _init_weights)" if own is not None else "")
                             + f"\n{code}")
                after = {n: _std(model, n) for n in names}
                changed = [n for n in names if after[n] != before[n]]
                changes += [Change(n, f.code, before[n], after[n],
                                   f.rule + (" (the model's _init_weights)" if own is not None else ""))
                            for n in changed]
                for n in changed:
                    if n in names_of:
                        changed_by.setdefault(names_of[n][0], f"{f.code} {f.location}")
                        others = [o for o in names_of[n] if o not in names]
                        if others:
                            tied.append(f"{f.code} changed '{n}' for this use; it is tied to "
                                        f"{', '.join(repr(o) for o in others)}, whose use changes with it")
            elif safety == "unsafe":
                if unsafe:
                    structural.append(structural_fix(model, f))
                else:
                    unfixed.append((f, why))
            elif safety == "data":
                if example_input is None:
                    unfixed.append((f, "LSUV rescales the layers on the example batch, and there is none"))
            else:
                unfixed.append((f, "no automatic fix: " + why))
        factors: Dict[str, float] = {}
        if lsuv and example_input is not None and data:
            redrawn = {c.name.rpartition(".")[0] for c in changes}
            factors, scale_lines, scale_changes = rescale(model, report, example_input, redrawn)
            lines += scale_lines
            changes += scale_changes
            if not factors:
                unfixed += [(f, "LSUV had nothing to rescale: no layer on the main path (every one feeds a "
                             "normalization, sits in a residual branch, or is the output layer) is off unit "
                             "variance; the cause is the architecture or the nonlinearity, not a layer's scale")
                            for f in data]
        for f in deferred:
            head_lines, head_changes = remeasured_head(model, report, example_input, f)
            lines += head_lines
            changes += head_changes
    finally:
        rng.restore()
    return FixResult(report, lines, changes, factors, unsafe=structural, unfixed=unfixed, tied=tied, model=model,
                     seed=seed)


def remeasured_head(model: nn.Module, report: Report, example_input: Any,
                    finding: Finding) -> Tuple[List[str], List[Change]]:
    """The repair of a finding measured on the output (:data:`MEASURED_ON_OUTPUT`: logits too
    large) once other fixes have changed the layers below the head: the head is scaled down, never
    up, to an output variance of at most 1 on the example batch, measured now (logits of order
    one, IA207's aim). Only a comment line, where the other fixes already brought the logits there."""
    head = report.analysis.output_layer
    if not head or _frozen(model, [head + ".weight"]):
        return [], []
    old = _std(model, head + ".weight")
    shrunk = lsuv_scale(model, example_input, layers={head}, target={head: 1.0}, shrink_only=True)
    if not shrunk:
        return [f"# {finding.code} {finding.rule}: {finding.location}, measured again after the fixes above "
                "changed the layers below it: its output variance on the example batch is at most 1 now"], []
    lines = [f"# {finding.code} {finding.rule}: {finding.location}, measured again after the fixes above changed "
             "the layers below it: scaled down to an output variance of at most 1 on the example batch\n"
             + "\n".join(f"{accessor(layer + '.weight')}.mul_({factor!r})" for layer, factor in shrunk.items())]
    return lines, [Change(head + ".weight", finding.code, old, _std(model, head + ".weight"),
                          "output layer, measured after the other fixes: output variance at most 1")]


def kept_at_sigmoid_gain(report: Report, redrawn: Set[str]) -> Set[str]:
    """The layers of ``redrawn`` (module names this fix re-drew) whose output feeds a sigmoid;
    every name of each. LSUV's unit output variance is the fixed point of the zero-mean
    nonlinearities' gains (He's for ReLU, tanh's, SELU's); a sigmoid's output has mean 1/2 and
    slope 1/4, and unit variance before it leaves the gradient shrinking about 16x in variance per
    layer: such a layer keeps its re-draw at the sigmoid gain (:data:`~initaudit.analysis.gains.
    SIGMOID_GAIN`, Glorot & Bengio 2010)."""
    rec = report.recording
    sigmoid = {name for name, use in report.analysis.consumers.items()
               if use.activation.name == "sigmoid" and name in redrawn}
    return {name for m in rec.modules if set(m.names) & sigmoid for name in m.names}


def rescale(model: nn.Module, report: Report, example_input: Any,
            redrawn: Optional[Set[str]] = None) -> Tuple[Dict[str, float], List[str], List[Change]]:
    """The data-dependent repair of the signal findings, in two passes on the example batch.

    First LSUV on the main path (:func:`lsuv_layers`; not a layer this fix re-drew for a sigmoid,
    :func:`kept_at_sigmoid_gain`) to unit output variance. Then what is
    too large for the stream is scaled down, never up (a small branch end or head is the
    recipe): inside a residual branch to unit variance; at a branch's end to 1/L of the
    stream's (which starts near unit variance, the main path's target), so that L branches
    grow it at most e-fold, (1 + 1/L)^L, instead of geometrically (the 1/sqrt(L) branch scale
    of GPT-2, Fixup and SkipInit, measured rather than assumed); the output layer to unit
    variance (logits of order one). Returns the total factor per layer, the lines that
    reproduce them, and the changes."""
    old = {layer: _std(model, layer + ".weight") for layer in _layers(model)}
    kept = kept_at_sigmoid_gain(report, redrawn or set())
    main = lsuv_scale(model, example_input, layers=lsuv_layers(report) - kept)
    ends = branch_ends(report)
    count = len({report.recording.module(n).names[0] if report.recording.module(n) else n for n in ends})
    head = report.analysis.output_layer
    targets = {**{n: 1.0 for n in branch_interior(report) - kept}, **{n: 1 / count for n in ends}}
    if head and head not in ends and not _frozen(model, [head + ".weight"]):
        targets[head] = 1.0
    shrunk = lsuv_scale(model, example_input, layers=set(targets), target=targets, shrink_only=True)
    lines = []
    if main:
        lines.append("# LSUV (Mishkin & Matas 2016): output variance 1 on the example batch, main path only\n"
                     + "\n".join(f"{accessor(layer + '.weight')}.mul_({factor!r})" for layer, factor in main.items()))
    if shrunk:
        lines.append("# too large, scaled down to an output variance on the example batch of at most 1 "
                     "(inside a residual branch, the output layer)"
                     + (f" or 1/{count} (a residual branch's end: one share of the stream's per branch)" if count else "")
                     + "\n" + "\n".join(f"{accessor(layer + '.weight')}.mul_({factor!r})"
                                          for layer, factor in shrunk.items()))
    changes = [Change(layer + ".weight", "LSUV", old.get(layer), _std(model, layer + ".weight"),
                      "output variance 1 on the example batch") for layer in main]
    changes += [Change(layer + ".weight", "LSUV", old.get(layer), _std(model, layer + ".weight"),
                       f"residual branch end: output variance 1/{count}" if layer in ends
                       else "output layer: output variance at most 1" if layer == head
                       else "inside a residual branch: output variance at most 1") for layer in shrunk]
    factors = dict(main)
    for layer, factor in shrunk.items():
        factors[layer] = factors.get(layer, 1.0) * factor
    return factors, lines, changes


def _already_changed(names: List[str], names_of: Dict[str, List[str]], changed_by: Dict[str, str]) -> Optional[str]:
    """The fix that already changed every parameter in ``names`` (through a tie), or None."""
    params = [n for n in names if n in names_of]
    if not params or any(names_of[n][0] not in changed_by for n in params):
        return None
    return changed_by[names_of[params[0]][0]]


def own_initializer(model: nn.Module, name: str) -> Optional[Tuple[str, str]]:
    """``(model path, module path)`` when the parameter ``name`` lies in a model that carries
    its own initializer, ``_init_weights(module)`` with a ``config`` (a Hugging Face
    ``PreTrainedModel``, duck-typed: transformers is not imported): the outermost such model,
    whose ``_init_weights`` knows its heads, and the module that holds the parameter."""
    if "transformers.initialization" not in sys.modules:
        # transformers 5's init functions honour _is_hf_initialized, which own_init relies on
        # to re-draw only the named parameters; 4.x writes through .data regardless
        return None
    owner = name.rpartition(".")[0]
    for path, module in model.named_modules():
        inside = not path or owner == path or owner.startswith(path + ".")
        if inside and callable(getattr(module, "_init_weights", None)) and hasattr(module, "config"):
            return path, owner
    return None


# run by the fixer and emitted as is by --emit-code, so that both re-draw the same values
OWN_INIT_HELPER = '''def own_init(model, root, owner, names):
    """Re-draw the parameters `names` with the model's own initializer, as Hugging Face's
    initialize_weights() does: `_init_weights` of the model at `root` on the module `owner`
    and each module above it up to `root`, children first; every other parameter is marked
    `_is_hf_initialized` meanwhile, the flag with which transformers leaves loaded weights alone."""
    top = model.get_submodule(root)
    marked = {}
    for name, param in top.named_parameters(remove_duplicate=False):
        full = f"{root}.{name}" if root else name
        if full not in names and id(param) not in marked:
            marked[id(param)] = (param, param.__dict__.get("_is_hf_initialized"))
            param._is_hf_initialized = True
    try:
        path = owner
        while True:
            top._init_weights(model.get_submodule(path))
            if path == root:
                break
            path = path.rpartition(".")[0]
    finally:
        for param, flag in marked.values():
            if flag is None:
                del param._is_hf_initialized
            else:
                param._is_hf_initialized = flag
'''


def own_init_code(model: nn.Module, finding: Finding, names: List[str]) -> Optional[str]:
    """The model's own initializer as ``finding``'s fix: ``own_init(model, root, module,
    names)`` (:data:`OWN_INIT_HELPER`) for each module holding a parameter it names, when the
    rule's fix is a re-draw (:data:`REDRAW_RULES`) and, tried first (the values and the RNG put
    back), the own initializer moves every named parameter to a finite, non-constant value
    whose std is out of :data:`OWN_INIT_BAND` of the current one (it would otherwise re-draw
    the scale that was found wrong). ``None``: the rule's own fix applies."""
    if finding.code not in REDRAW_RULES:
        return None
    params = dict(model.named_parameters(remove_duplicate=False))
    if not names or any(n not in params for n in names):
        return None
    calls: Dict[str, str] = {}
    for name in names:
        found = own_initializer(model, name)
        if found is None:
            return None
        root, owner = found
        calls.setdefault(owner, f"own_init(model, {root!r}, {owner!r}, {names!r})")
    code = "\n".join(calls.values())
    now = {n: params[n].detach().clone() for n in names}
    try:
        with torch.random.fork_rng(devices=_cuda_indices(model)), torch.no_grad():
            exec(compile(OWN_INIT_HELPER + code, "<own init trial>", "exec"), _namespace(model))  # noqa: S102
            drawn = {n: params[n].detach().double() for n in names}
            for n in names:
                new_std, old_std = float(drawn[n].std(correction=0)), float(now[n].double().std(correction=0))
                if not (math.isfinite(new_std) and new_std > 0 and bool(torch.isfinite(drawn[n]).all())):
                    return None
                if (math.isfinite(old_std) and old_std > 0 and bool(torch.isfinite(now[n]).all())
                        and OWN_INIT_BAND[0] <= new_std / old_std <= OWN_INIT_BAND[1]):
                    return None
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(now[n])
    return code


def _cuda_indices(model: nn.Module) -> List[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def fix_safety(rules: Dict[str, Rule], code: str) -> Tuple[str, str]:
    """``(fix safety, why no fix)`` that the rule of ``code`` declares; a code no rule has
    (a finding from a report made with a plugin not loaded here) gets no fix."""
    rule = rules.get(code)
    if rule is None:
        return "none", DEFAULT_WHY_NO_FIX
    return rule.fix, rule.why_no_fix


def structural_fix(model: nn.Module, finding: Finding) -> str:
    """Make the structural change of an unsafe finding: its own ``fix`` line when it has one,
    otherwise give each name it lists its own parameter (:func:`untie`, IA401's repair).
    Returns what was done."""
    if not finding.fix:
        return untie(model, finding)
    run_fix_line(model, finding.fix, f"{finding.code} {finding.location}")
    return f"{finding.code} {finding.location}: {finding.fix}"


def run_fix_line(model: nn.Module, code: str, label: str, generator: Optional[torch.Generator] = None) -> None:
    """Run a fix's ``code`` on ``model`` under ``torch.no_grad()``, with ``generator`` as the
    name its :func:`seeded` draws use."""
    with torch.no_grad():
        exec(compile(code, f"<fix {label}>", "exec"), _namespace(model, generator))  # noqa: S102


def _layers(model: nn.Module) -> List[str]:
    return [name for name, m in model.named_modules() if _scalable(m)]


def _scalable(module: Any) -> bool:
    """A layer, or a normalization with a gain: what LSUV scales through its ``weight``."""
    return knowledge.is_layer(module) or (
        isinstance(module, knowledge.NORM_TYPES) and isinstance(getattr(module, "weight", None), torch.Tensor))


def lsuv_scale(model: nn.Module, example_input: Any, tolerance: float = LSUV_TOLERANCE,
               iterations: int = LSUV_ITERATIONS, layers: Optional[Set[str]] = None,
               target: Union[float, Dict[str, float]] = 1.0, shrink_only: bool = False) -> Dict[str, float]:
    """LSUV (Mishkin & Matas 2016): in forward order, scale each layer's weight until the
    variance of its output on the example batch is ``target`` (or ``target[layer]``; within ``tolerance``, relative,
    at most ``iterations`` forwards per layer). Returns the total factor per layer. With
    ``layers``, only the layers named there are scaled; with ``shrink_only``, only those
    whose output variance is above ``target`` (a residual branch that starts smaller keeps
    its recipe).

    The forwards run in training mode without gradients, and leave buffers, flags and RNG
    as they were (:func:`initaudit.record.state.preserved`); only the weights are scaled.
    """
    modules = dict(model.named_modules())
    names = names_by_id(model.named_modules(remove_duplicate=False))
    # forward order: the order in which layers are first called
    order: List[str] = []
    recorder = CallRecorder(names, transfer.Deferred())
    with preserved(model), torch.no_grad():
        model.train()
        recorder.attach()
        try:
            call_model(model, example_input)
        finally:
            recorder.detach()
        for name in recorder.calls:
            if name not in order and _scalable(modules.get(name)):
                order.append(name)
        factors: Dict[str, float] = {}
        for name in order:
            layer = modules[name]
            if not layer.weight.requires_grad or (layers is not None and name not in layers):
                continue  # frozen, or not on the main path: not ours to change
            wanted = target[name] if isinstance(target, dict) else target
            original = layer.weight.detach().clone()
            total = 1.0
            for _ in range(iterations):
                captured: List[torch.Tensor] = []
                handle = layer.register_forward_hook(lambda m, a, out: captured.append(out.detach()))
                try:
                    call_model(model, example_input)
                finally:
                    handle.remove()
                variance = float(captured[0].double().var()) if captured else 0.0
                if (not math.isfinite(variance) or variance <= 0 or abs(variance / wanted - 1) < tolerance
                        or (shrink_only and variance < wanted)):
                    break
                factor = math.sqrt(wanted / variance)
                layer.weight.mul_(factor)
                total *= factor
            if total != 1.0:
                # one multiplication by the product, as the emitted code does: bit for bit the same
                layer.weight.copy_(original).mul_(total)
                factors[name] = total
    return factors


def untie(model: nn.Module, finding: Finding) -> str:
    """Give every use of a shared parameter its own, freshly drawn Parameter (IA401)."""
    names = list(dict.fromkeys(finding.locations))
    owners = list(dict.fromkeys(n.rpartition(".")[0] for n in names))
    first = model.get_submodule(owners[0])
    done = []
    for owner in owners[1:]:
        parent_name, _, attr = owner.rpartition(".")
        parent = model.get_submodule(parent_name)
        current = parent.get_submodule(attr) if attr else model
        if current is first:
            replacement = copy.deepcopy(first)
            if hasattr(replacement, "reset_parameters"):
                replacement.reset_parameters()
            setattr(parent, attr, replacement)  # a module used twice becomes two modules
            done.append(f"'{owner}' is now a copy of '{owners[0]}' with its own parameters")
        else:
            for n in names:
                if n.rpartition(".")[0] == owner:
                    attr_name = n.rpartition(".")[2]
                    shared = getattr(current, attr_name)
                    setattr(current, attr_name, nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad))
                    done.append(f"'{n}' now has its own Parameter")
    return "; ".join(done)


@contextlib.contextmanager
def values_kept(model: nn.Module) -> Iterator[None]:
    """Put back every parameter's and buffer's values on leaving (a dry run of a fix)."""
    kept = {id(t): (t, t.detach().clone()) for _, t in itertools.chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))}
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in kept.values():
                tensor.copy_(value)


def save_state_dict(model: nn.Module, path: str, force: bool = False) -> None:
    """``torch.save`` the state dict through a temporary file and a rename."""
    if os.path.exists(path) and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    # torch.save names the archive's folder after the file's name up to its last dot: without
    # a suffix, ".initaudit-x" gives an empty one, which it refuses
    write_atomically(path, lambda tmp: torch.save(model.state_dict(), tmp), suffix=".pt")
