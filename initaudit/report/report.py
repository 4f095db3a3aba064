"""The report: findings with the recording they came from; a table for people, JSON
(schema ``initaudit/1``) for machines.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from tabulate import tabulate

from initaudit.analysis.model import Analysis, analyze
from initaudit.core.numbers import finite_or_none, short_number
from initaudit.core.options import FAIL_LEVELS, SEVERITY_RANK
from initaudit.core.records import ModuleRecord, Recording, TensorRecord
from initaudit.rules.engine import Finding

SCHEMA = "initaudit/1"


def fails(severity: str, fail_on: str) -> bool:
    """Whether a finding of ``severity`` fails a run with ``--fail-on fail_on``."""
    if fail_on not in FAIL_LEVELS:
        raise ValueError(f"fail_on must be one of {', '.join(FAIL_LEVELS)}, not {fail_on!r}")
    if fail_on == "never":
        return False
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[fail_on]


@dataclass
class Report:
    """The result of one audit."""

    findings: List[Finding]
    recording: Recording
    target: Optional[str] = None
    device: str = "cpu"
    torch_version: str = ""
    seconds: float = 0.0
    rules: List[str] = field(default_factory=list)  # codes that ran
    source: Optional[str] = None  # the file that defines the target's factory
    line: Optional[int] = None  # the factory's line in it
    suppressed: List[Finding] = field(default_factory=list)  # by source or configuration
    notes: List[str] = field(default_factory=list)  # what the audit did that a user should know
    baselined: List[Finding] = field(default_factory=list)  # already in the baseline
    # the rule options the user overrode, by option key (the rules' defaults hold for the rest)
    options: Dict[str, Any] = field(default_factory=dict)
    # what a fix did before this audit (an initaudit.fixing.fixer.FixResult), or None
    fix: Any = None
    # what the recording means (fingerprints, layer runs, the head); made from it when not given
    analysis: Optional[Analysis] = None

    def __post_init__(self) -> None:
        if self.analysis is None:
            self.analysis = analyze(self.recording)

    @property
    def parameters(self) -> List[TensorRecord]:
        """Every parameter, then the effective weights of parametrized modules."""
        return self.recording.parameters

    @property
    def buffers(self) -> List[TensorRecord]:
        return [t for t in self.recording.tensors if t.kind == "buffer"]

    @property
    def modules(self) -> List[ModuleRecord]:
        return self.recording.modules

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def ok(self, fail_on: str = "warning") -> bool:
        """True when no finding is at or above ``fail_on``."""
        return not any(fails(f.severity, fail_on) for f in self.findings)

    def summary(self) -> Dict[str, Any]:
        params = [t for t in self.parameters if t.kind == "parameter"]
        return {
            "errors": self.count("error"),
            "warnings": self.count("warning"),
            "infos": self.count("info"),
            "parameters": len(params),
            "elements": sum(t.numel for t in params),
            "seconds": round(self.seconds, 4),
            "suppressed": len(self.suppressed),
            "baselined": len(self.baselined),
            "jacobian_gain": finite_or_none(self.recording.jacobian_gain),
        }

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA,
            "target": self.target,
            "device": self.device,
            "torch": self.torch_version,
            "findings": [f.to_dict() for f in self.findings],
            "suppressed": [f.to_dict() for f in self.suppressed],
            "parameters": [self._tensor_dict(t) for t in self.parameters],
            "buffers": [self._tensor_dict(t) for t in self.buffers],
            "modules": [self._module_dict(m) for m in self.modules],
            "rules": list(self.rules),
            "notes": list(self.notes),
            "graph": {
                "traced": list(self.recording.traced),
                "unobserved": list(self.recording.unobserved),
                "jacobian_note": self.recording.jacobian_note,
            },
            "loss": finite_or_none(self.recording.loss),
            "zero_output_loss": finite_or_none(self.recording.zero_output_loss),
            "residual_sums": [{"branch": s.branch, "stream_std": finite_or_none(s.stream),
                               "branch_std": finite_or_none(s.added), "ratio": finite_or_none(s.ratio)}
                              for s in self.analysis.stream_sums],
            "initial_loss": None if self.recording.classes is None else {
                "classes": self.recording.classes,
                "expected": finite_or_none(self.recording.expected_initial_loss),
                "ln_classes": math.log(self.recording.classes),
                "logit_std": finite_or_none(self.recording.logit_std),
                "labelled": self._labelled(),
            },
            "first_steps": None if self.recording.step_losses is None else {
                "optimizer": self.recording.step_optimizer or "",
                "losses": [finite_or_none(v) for v in self.recording.step_losses],
                "own_loss": self.recording.step_own_loss,
                "output_changes": self._output_changes(),
            },
            "summary": self.summary(),
        }

    def _labelled(self) -> Optional[Dict[str, Any]]:
        labelled = self.recording.labelled_loss
        if labelled is None:
            return None
        return {"loss": finite_or_none(labelled.loss), "shuffled": finite_or_none(labelled.shuffled),
                "noise": finite_or_none(labelled.noise), "prior_entropy": finite_or_none(labelled.prior_entropy),
                "rows": labelled.rows}

    def _output_changes(self) -> Dict[str, Dict[str, Optional[float]]]:
        """Per layer, the RMS of its output's change over the optimizer's steps, absolute and
        relative to its output's RMS at init (the same batch)."""
        changes = {}
        for name, change in (self.recording.step_output_changes or {}).items():
            m = self.recording.module(name)
            rms = math.sqrt(m.output.std ** 2 + m.output.mean ** 2) if m is not None and m.output is not None else None
            changes[name] = {"rms": finite_or_none(change),
                             "relative": finite_or_none(change / rms) if rms else None}
        return changes

    def _module_dict(self, m: ModuleRecord) -> Dict[str, Any]:
        """A module's record, with its consumer as the analysis decided it where the autograd
        graph did (``consumer_method``: ``autograd``; the recording keeps what fx or the call
        order found)."""
        d = m.to_dict()
        use = self.analysis.consumers.get(m.name)
        if use is not None and use.method == "autograd":
            d["consumer_method"] = "autograd"
            if use.consumer is not None:
                kind = "layer" if use.consumer.name == "linear" else "activation"  # the next layer, nothing between
                d["consumer_kind"], d["consumer"], d["consumer_param"] = kind, use.consumer.name, use.consumer.param
            elif use.ends is not None:
                d["consumer_kind"] = {"norm": "norm", "output": "output"}.get(use.ends, "opaque")
                d["consumer"], d["consumer_param"] = use.ends, 0.0
        return d

    def _tensor_dict(self, t: TensorRecord) -> Dict[str, Any]:
        """A tensor's record with the init the analysis recognised (``init``: the call and its
        Keras name; ``init_call``: that call on ``{w}``), after its shape statistics."""
        recorded = t.to_dict()
        found = self.analysis.fingerprint(t)
        interpreted = {"init": found.describe() if found is not None else None,
                       "init_call": self.analysis.init_call(t, "{w}")}
        d: Dict[str, Any] = {}
        for key, value in recorded.items():
            d[key] = value
            if key == "ortho_spread":
                d.update(interpreted)
        return d

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary_line(self) -> str:
        s = self.summary()
        counts = ", ".join(
            f"{n} {word}{'' if n == 1 or word == 'info' else 's'}"
            for n, word in ((s["errors"], "error"), (s["warnings"], "warning"), (s["infos"], "info"))
        )
        what = f"{self.target}: " if self.target else ""
        hidden = ", ".join(
            f"{n} {word}" for n, word in ((s["suppressed"], "suppressed"), (s["baselined"], "in the baseline")) if n
        )
        return (
            f"{what}{counts}{f' ({hidden})' if hidden else ''} in {s['parameters']} parameters "
            f"({_human(s['elements'])} elements) on {self.device}, {s['seconds']:.2f}s"
        )

    def table(self, width: Optional[int] = None, show_suppressed: bool = False) -> str:
        """Findings as a table (most severe first), then the summary line."""
        blocks = [_findings_table(self.findings, width) if self.findings else "No findings."]
        if show_suppressed and self.suppressed:
            blocks.append("Suppressed:\n" + _findings_table(self.suppressed, width, why=True))
        blocks.extend(f"note: {note}" for note in self.notes)
        blocks.append(self.summary_line())
        return "\n\n".join(blocks)

    def stats_table(self) -> str:
        """Per-parameter statistics, with why a rule could not judge a parameter."""
        rows = []
        for t in self.recording.tensors:
            grad = t.grad.norm if t.grad is not None else t.grad_status
            rows.append(
                [
                    t.name + (f" (+{len(t.names) - 1})" if len(t.names) > 1 else ""),
                    t.kind,
                    "x".join(map(str, t.shape)) or "scalar",
                    t.dtype,
                    _num(t.mean),
                    _num(t.std),
                    _num(t.min),
                    _num(t.max),
                    _num(t.zero_fraction),
                    t.nonfinite,
                    t.fan_in if t.fan_in is not None else "",
                    t.fan_out if t.fan_out is not None else "",
                    _num(grad) if isinstance(grad, float) else grad,
                    self.analysis.fingerprint(t).describe() if self.analysis.fingerprint(t) else "",
                    "; ".join(t.notes),
                ]
            )
        return tabulate(
            rows,
            headers=["name", "kind", "shape", "dtype", "mean", "std", "min", "max", "zeros",
                     "nonfinite", "fan_in", "fan_out", "grad norm", "init (fingerprint)", "notes"],
            tablefmt="simple",
            disable_numparse=True,
        )


def _findings_table(findings: List[Finding], width: Optional[int], why: bool = False) -> str:
    width = width or shutil.get_terminal_size((120, 24)).columns
    message_width = max(40, width - 50)
    rows = []
    shown = {f"{f.code} {f.location}" for f in findings}
    for f in findings:
        text = f.message if not f.fix else f"{f.message}\nfix: {f.fix}"
        if why:
            text += f"\nsuppressed by {f.suppressed_by}"
        if f.caused_by in shown:  # listed right under its root (rules.engine.after_their_roots)
            rows.append(["  " + f.code, f.severity, "  " + f.location, f"(caused by {f.caused_by}) {text}"])
        else:
            rows.append([f.code, f.severity, f.location, text])
    return tabulate(
        rows,
        headers=["code", "severity", "location", "message"],
        tablefmt="simple",
        maxcolwidths=[None, None, 30, message_width],
        disable_numparse=True,
    )


# the tensor table shows NaN and Inf statistics as they are
_num = functools.partial(short_number, digits=4, non_finite=True)


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
