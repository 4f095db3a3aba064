"""``initaudit TARGET``: a thin command-line layer over :func:`initaudit.audit`.

Exit codes: 0 no finding at or above ``--fail-on``; 1 findings; 2 the target could not be
loaded or run (one line on stderr; the traceback with ``--verbose``).
"""

from __future__ import annotations

import random
import sys
import traceback
from typing import Any, List, Optional, Sequence

import click
import torch

from . import __version__
from .api import audit, resolve_device
from .errors import InitauditError, describe
from .inputs import DEFAULT_BATCH, parse_shape
from .loader import load_target, parse_factory_args
from .report import FAIL_LEVELS

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _codes(values: Sequence[str]) -> Optional[List[str]]:
    """``("IA1,IA2", "IA401")`` -> ``["IA1", "IA2", "IA401"]``; ``None`` when none given."""
    codes = [c.strip() for v in values for c in v.split(",") if c.strip()]
    return codes or None


def seed_everything(seed: int) -> None:
    """Seed the generators a factory may draw its init from, so a seed gives one model."""
    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


def fail(message: str, exc: Optional[BaseException], verbose: bool) -> "click.exceptions.Exit":
    if verbose and exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    click.echo(f"initaudit: error: {message}", err=True)
    return click.exceptions.Exit(EXIT_ERROR)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@click.option("--factory-arg", "factory_args", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument for the factory, parsed as a Python literal. Repeatable.")
@click.option("--input-shape", metavar="N,C,...", help="Shape of a random example input, e.g. 8,3,32,32.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH, show_default=True,
              help="Batch of an inferred example input.")
@click.option("--device", help="Device to audit on (cpu, cuda, cuda:1, auto). Default: where the factory put the model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the model, input and loss.")
@click.option("--select", multiple=True, metavar="CODES", help="Rule codes or prefixes to enable (e.g. IA1,IA401).")
@click.option("--ignore", multiple=True, metavar="CODES", help="Rule codes or prefixes to disable.")
@click.option("--fail-on", type=click.Choice(FAIL_LEVELS), default="warning", show_default=True,
              help="Lowest severity that makes the exit code 1.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--stats", is_flag=True, help="Also print per-parameter statistics.")
@click.option("--tied", multiple=True, metavar="A=B",
              help="Declare parameters deliberately tied (e.g. encoder.weight=decoder.weight). Repeatable.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks of errors.")
@click.version_option(__version__, prog_name="initaudit")
def main(
    target: str,
    factory_args: Sequence[str],
    input_shape: Optional[str],
    batch_size: int,
    device: Optional[str],
    seed: int,
    select: Sequence[str],
    ignore: Sequence[str],
    fail_on: str,
    output_format: str,
    stats: bool,
    tied: Sequence[str],
    verbose: bool,
) -> None:
    """Audit the initialization of the model built by TARGET.

    TARGET is path/to/file.py:factory or package.module:factory. The factory returns an
    nn.Module, (model, example_input), or {"model": m, "input": x, "loss": fn}.
    """
    try:
        shape = parse_shape(input_shape) if input_shape else None
        kwargs = parse_factory_args(list(factory_args))
        seed_everything(seed)
        built = load_target(target, kwargs)
        dev = resolve_device(device, built.model)
        model = built.model.to(dev)
        report = audit(
            model,
            built.example_input,
            loss=built.loss,
            select=_codes(select),
            ignore=_codes(ignore),
            seed=seed,
            tied=list(tied),
            input_shape=shape,
            batch_size=batch_size,
            target=target,
        )
    except InitauditError as exc:
        raise fail(str(exc), exc, verbose)
    except ValueError as exc:
        raise fail(str(exc), exc, verbose)
    except KeyboardInterrupt:
        click.echo("initaudit: interrupted", err=True)
        raise click.exceptions.Exit(130)
    except Exception as exc:  # a failure we did not foresee still gets one line
        raise fail(f"auditing {target} failed: {describe(exc)} (rerun with --verbose for the traceback)", exc, verbose)

    if output_format == "json":
        click.echo(report.to_json())
    else:
        if stats:
            click.echo(report.stats_table() + "\n")
        click.echo(report.table())
    raise click.exceptions.Exit(EXIT_OK if report.ok(fail_on) else EXIT_FINDINGS)
