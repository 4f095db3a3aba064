"""``initaudit TARGET [TARGET ...]``: a thin command-line layer over the API.

Exit codes: 0 no finding at or above ``--fail-on``; 1 findings; 2 a target could not be
loaded or run, or the configuration is wrong (one line on stderr; the traceback with
``--verbose``). With several targets the exit code is the worst.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TYPE_CHECKING, List, Optional, Sequence

import click

# only what declaring the options needs: --help and --version answer without importing
# torch; the rest is imported once an audit is about to run
from initaudit import __version__
from initaudit.core.errors import InitauditError, describe
from initaudit.core.files import write_text_atomically
from initaudit.core.options import DEFAULT_BATCH, FAIL_LEVELS

if TYPE_CHECKING:
    from initaudit.gate.config import Settings
    from initaudit.report.report import Report

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
FORMATS = ("table", "json", "sarif", "github")


def _codes(values: Sequence[str]) -> Optional[List[str]]:
    """``("IA1,IA2", "IA401")`` -> ``["IA1", "IA2", "IA401"]``; ``None`` when none given."""
    codes = [c.strip() for v in values for c in v.split(",") if c.strip()]
    return codes or None


def error(message: str, exc: Optional[BaseException] = None, verbose: bool = False) -> None:
    """One line on stderr; the traceback first with ``--verbose``."""
    if verbose and exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    click.echo(f"initaudit: error: {message}", err=True)


def write_file(path: str, text: str) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a report."""
    write_text_atomically(path, text if text.endswith("\n") else text + "\n")


def settings_from(
    config: Optional[str],
    select: Sequence[str],
    ignore: Sequence[str],
    fail_on: Optional[str],
    device: Optional[str],
    seed: Optional[int],
    tied: Sequence[str],
) -> "Settings":
    """The configuration file's settings, with every flag given on the command line winning."""
    from initaudit.api import parse_ties
    from initaudit.gate.config import check_codes, load_settings

    settings = load_settings(config)
    selected, ignored = _codes(select), _codes(ignore)
    for flag, codes in (("--select", selected), ("--ignore", ignored)):
        if codes:
            check_codes(codes, flag)
    if tied:
        parse_ties(tied)
    return settings.override(
        select=selected,
        ignore=ignored,
        fail_on=fail_on,
        device=device,
        seed=seed,
        tied=(settings.tied + list(tied)) if tied else None,
    )


def show_fix(after: "Report", emit_code: bool, machine_output: bool) -> None:
    """The before/after tables of a fixed target (``after.fix`` says what was done). With
    --emit-code the code alone goes to stdout, and with a machine format the report does:
    the tables then go to stderr."""
    result = after.fix
    to_stderr = emit_code or machine_output
    done, then = (("Would change (--dry-run: nothing was changed):", "After the fix, as it would be:")
                  if result.dry_run else ("Fixed:", "After the fix:"))
    click.echo(f"Before the fix:\n{result.before.table()}\n", err=to_stderr)
    click.echo(f"{done}\n{result.table()}\n", err=to_stderr)
    if emit_code:
        click.echo(f"{then}\n{after.table()}", err=True)
        click.echo(result.emit_code())
    else:
        click.echo(then, err=to_stderr)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@click.option("--factory-arg", "factory_args", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument for the factory, parsed as a Python literal. Repeatable.")
@click.option("--input-shape", metavar="N,C,...", help="Shape of a random example input, e.g. 8,3,32,32.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True,
              help="Batch of an inferred example input.")
@click.option("--classes", type=click.IntRange(min=2), metavar="C",
              help="The output is logits over C classes: compare the loss at init with ln C (IA207); in a "
                   "classifier of ReLU-like layers, a scale too large is then judged by its logits (IA201, "
                   "IA203, IA206).")
@click.option("--optimizer", "optimizer_spec", metavar="SPEC",
              help='Take the first steps with this optimizer, e.g. "AdamW(lr=3e-4, weight_decay=0.1)", and undo them (IA701).')
@click.option("--steps", type=click.IntRange(1, 3), default=1, show_default=True,
              help="Optimizer steps with --optimizer (or the factory's 'optimizer').")
@click.option("--sweep", "sweep_spec", metavar="NAME=V1,V2,...",
              help="Build and audit the target once per value of its factory argument NAME (e.g. width=64,128,256,512) "
                   "and report how each layer's activations at init scale with it; exit 1 if one changes.")
@click.option("--device", help="Device to audit on (cpu, cuda, cuda:1, auto). Default: where the factory put the model.")
@click.option("--seed", type=int, help="Seed for the model, input and loss.  [default: 0]")
@click.option("--select", multiple=True, metavar="CODES", help="Rule codes or prefixes to enable (e.g. IA1,IA401).")
@click.option("--ignore", multiple=True, metavar="CODES", help="Rule codes or prefixes to disable.")
@click.option("--fail-on", type=click.Choice(FAIL_LEVELS),
              help="Lowest severity that makes the exit code 1.  [default: warning]")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Report format.")
@click.option("--output", type=click.Path(dir_okay=False, writable=True),
              help="Write the report (in --format) to FILE; the table still goes to the terminal.")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Settings file (default: [tool.initaudit] of the nearest pyproject.toml).")
@click.option("--stats", is_flag=True, help="Also print per-parameter statistics.")
@click.option("--show-suppressed", is_flag=True, help="Also list suppressed findings and why.")
@click.option("--profile", "show_profile", is_flag=True,
              help="Also print the depth profile: per layer, signal, gradient and weight scale; and the "
              "residual stream, sum by sum.")
@click.option("--plot", type=click.Path(dir_okay=False), metavar="FILE.png",
              help="Draw the depth profile as a signal-propagation plot (needs matplotlib).")
@click.option("--tied", multiple=True, metavar="A=B",
              help="Declare parameters deliberately tied (e.g. encoder.weight=decoder.weight). Repeatable.")
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False),
              help="Fail only on findings that are not in this baseline file.")
@click.option("--write-baseline", type=click.Path(dir_okay=False),
              help="Record today's findings in FILE and exit 0.")
@click.option("--params-only", is_flag=True,
              help="No forward at all: the value rules only (for models too large to run).")
@click.option("--no-backward", is_flag=True, help="Forward but no backward: no gradient rules.")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Load this state dict (torch.save, read with weights_only=True) into the model first.")
@click.option("--fix", "do_fix", is_flag=True, help="Repair the findings that have a safe fix, in place, and audit again.")
@click.option("--unsafe-fixes", is_flag=True, help="With --fix, also make structural fixes (untie shared parameters).")
@click.option("--save", type=click.Path(dir_okay=False),
              help="With --fix, torch.save the fixed state_dict to FILE (not when the audit after the fix still fails).")
@click.option("--force", is_flag=True,
              help="Let --save overwrite an existing file, and save even when the audit after the fix still fails.")
@click.option("--dry-run", is_flag=True,
              help="With --fix, show what it would change (old and new std, and why) and audit that, "
                   "changing nothing; exits as the audit of the model as it is.")
@click.option("--emit-code", is_flag=True,
              help="With --fix, print `def init_weights(model)` reproducing the safe fixes (tables go to stderr).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(__version__, prog_name="initaudit")
def main(
    targets: Sequence[str],
    factory_args: Sequence[str],
    input_shape: Optional[str],
    batch_size: int,
    classes: Optional[int],
    optimizer_spec: Optional[str],
    steps: int,
    sweep_spec: Optional[str],
    device: Optional[str],
    seed: Optional[int],
    select: Sequence[str],
    ignore: Sequence[str],
    fail_on: Optional[str],
    output_format: str,
    output: Optional[str],
    config: Optional[str],
    stats: bool,
    show_suppressed: bool,
    show_profile: bool,
    plot: Optional[str],
    tied: Sequence[str],
    baseline_path: Optional[str],
    write_baseline: Optional[str],
    checkpoint: Optional[str],
    params_only: bool,
    no_backward: bool,
    do_fix: bool,
    unsafe_fixes: bool,
    save: Optional[str],
    force: bool,
    dry_run: bool,
    emit_code: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    """Audit the initialization of the models built by each TARGET.

    TARGET is path/to/file.py:factory or package.module:factory. The factory returns an
    nn.Module, (model, example_input), or {"model": m, "input": x, "loss": fn}.
    """
    from initaudit import _quiet_torch  # noqa: F401  (first: torch without NumPy's warning)
    from initaudit.analysis.profile import depth_profile
    from initaudit.api import audit_target
    from initaudit.core.progress import Progress
    from initaudit.gate import baseline
    from initaudit.load.inputs import parse_shape
    from initaudit.load.target import parse_factory_args
    from initaudit.record import distributed
    from initaudit.report import formats
    from initaudit.report.profile import plot as draw_profile
    from initaudit.report.profile import profile_table, stream_table

    try:
        settings = settings_from(config, select, ignore, fail_on, device, seed, tied)
        shape = parse_shape(input_shape) if input_shape else None
        kwargs = parse_factory_args(list(factory_args))
        accepted = baseline.load(baseline_path) if baseline_path else None
        if optimizer_spec:
            from initaudit.record.step import parse_optimizer

            parse_optimizer(optimizer_spec)  # a malformed spec is the user's error, before anything runs
        swept = None
        if sweep_spec:
            from initaudit.analysis.sweep import parse_sweep

            swept = parse_sweep(sweep_spec)
            if len(targets) > 1 or do_fix:
                raise ValueError("--sweep takes one target, and no --fix")
        if (save or emit_code or unsafe_fixes or dry_run) and not do_fix:
            raise ValueError("--save, --emit-code, --unsafe-fixes and --dry-run need --fix")
        if save and dry_run:
            raise ValueError("--save and --dry-run: a dry run changes nothing, so there is nothing to save")
        if save and os.path.exists(save) and not force:
            raise ValueError(f"--save {save}: the file exists; pass --force to overwrite it")
        if do_fix and len(targets) > 1 and (save or emit_code):
            raise ValueError("--save and --emit-code take one target")
    except (InitauditError, ValueError) as exc:
        error(str(exc), exc, verbose)
        raise click.exceptions.Exit(EXIT_ERROR)

    if swept is not None:
        from initaudit.api import sweep

        try:
            result = sweep(targets[0], swept[0], swept[1], settings, factory_args=kwargs, input_shape=shape,
                           batch_size=batch_size, progress=Progress(enabled=not quiet), optimizer=optimizer_spec,
                           steps=steps)
        except (InitauditError, ValueError) as exc:
            error(str(exc), exc, verbose)
            raise click.exceptions.Exit(EXIT_ERROR)
        except Exception as exc:
            error(f"sweeping {targets[0]} failed: {describe(exc)} (rerun with --verbose for the traceback)", exc, verbose)
            raise click.exceptions.Exit(EXIT_ERROR)
        click.echo(f"Width sweep of {targets[0]} over {swept[0]}:\n{result.table()}")
        if plot:
            from initaudit.report.profile import plot_sweep

            try:
                plot_sweep(result, plot, title=f"{targets[0]}: {swept[0]}")
            except InitauditError as exc:
                error(str(exc), exc, verbose)
                raise click.exceptions.Exit(EXIT_ERROR)
        raise click.exceptions.Exit(EXIT_FINDINGS if result.flagged else EXIT_OK)

    try:
        # under torchrun every rank runs this; rank 0 alone reports, all exit with its code
        joined = distributed.init_from_env(settings.device)
    except Exception as exc:
        error(f"could not join the torch.distributed process group: {describe(exc)}", exc, verbose)
        raise click.exceptions.Exit(EXIT_ERROR)
    reports: List[Report] = []
    status = EXIT_OK
    for target in targets:
        progress = Progress(enabled=not quiet and distributed.rank() == 0)
        try:
            report = audit_target(target, settings, factory_args=kwargs, input_shape=shape, batch_size=batch_size,
                                  fix=do_fix, unsafe_fixes=unsafe_fixes, dry_run=dry_run, checkpoint=checkpoint,
                                  params_only=params_only, no_backward=no_backward, progress=progress,
                                  classes=classes, optimizer=optimizer_spec, steps=steps)
            progress.done()
            if do_fix:
                root = distributed.rank() == 0  # a factory may have joined a process group itself
                if root:
                    show_fix(report, emit_code, output_format != "table" and not output)
                if save and root and not report.ok(settings.fail_on) and not force:
                    # weights that do not audit clean are not written over the user's good ones
                    from initaudit.report.report import fails

                    left = sorted({f.code for f in report.findings if fails(f.severity, settings.fail_on)})
                    error(f"--save {save}: not written: the audit after the fix still fails ({', '.join(left)}; "
                          "the fix's table says what it could not fix); pass --force to save anyway", None, verbose)
                    status = EXIT_ERROR
                elif save and root:
                    from initaudit.fixing.fixer import save_state_dict

                    save_state_dict(report.fix.model, save, force=force)
                    click.echo(f"initaudit: saved the fixed state_dict to {save}", err=True)
        except (InitauditError, ValueError) as exc:
            progress.done()
            error(f"{target}: {exc}" if len(targets) > 1 else str(exc), exc, verbose)
            status = EXIT_ERROR
            continue
        except KeyboardInterrupt:
            click.echo("initaudit: interrupted", err=True)
            distributed.leave(joined)
            raise click.exceptions.Exit(130)
        except Exception as exc:  # a failure we did not foresee still gets one line
            error(f"auditing {target} failed: {describe(exc)} (rerun with --verbose for the traceback)", exc, verbose)
            status = EXIT_ERROR
            continue
        if accepted is not None:
            baseline.apply(report, accepted)
        reports.append(report)
        # a dry run changed nothing: the exit code is the model's as it is
        judged = report.fix.before if dry_run else report
        if not judged.ok(settings.fail_on):
            status = max(status, EXIT_FINDINGS)

    root = distributed.rank() == 0
    if write_baseline:
        if root:
            count = baseline.write(write_baseline, reports)
            click.echo(f"initaudit: wrote {count} finding(s) to the baseline {write_baseline}", err=True)
        status = status if status == EXIT_ERROR else EXIT_OK
    elif reports and not emit_code and root:
        rendered = formats.render(output_format, reports, accepted is not None, show_suppressed)
        terminal = formats.render("table", reports, show_suppressed=show_suppressed) if output else rendered
        if output:
            write_file(output, rendered)
        if stats and (output or output_format == "table"):
            click.echo("\n\n".join(r.stats_table() for r in reports) + "\n")
        if show_profile and (output or output_format == "table"):
            for r in reports:
                click.echo(f"Depth profile of {r.target}:\n{profile_table(depth_profile(r.analysis))}\n")
                if r.analysis.stream_sums:
                    click.echo(f"Residual stream of {r.target} (each sum x + f(x), in forward order):\n"
                               f"{stream_table(r.analysis.stream_sums)}\n")
        if plot:
            try:
                for i, r in enumerate(reports):
                    path = plot if len(reports) == 1 else f"{os.path.splitext(plot)[0]}-{i}{os.path.splitext(plot)[1]}"
                    draw_profile(depth_profile(r.analysis), path, title=r.target or "", sums=r.analysis.stream_sums)
            except InitauditError as exc:
                error(str(exc), exc, verbose)
                status = EXIT_ERROR
        click.echo(terminal)
    status, failed = distributed.agree(status, EXIT_ERROR)
    if failed and root:
        error(f"rank{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} could not audit "
              f"(see {'their' if len(failed) > 1 else 'its'} stderr): every rank exits {EXIT_ERROR}")
    distributed.leave(joined)
    raise click.exceptions.Exit(status)
