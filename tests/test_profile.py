"""--profile and --plot: the depth profile shows where the signal dies."""

import importlib.util
import sys

import pytest

from click.testing import CliRunner
from conftest import EXAMPLES, INLINE_RESIDUAL_STACK, mlp

from initaudit import audit
from initaudit.analysis.profile import depth_profile
from initaudit.cli import main


def test_profile_rows_follow_the_forward_order_and_show_the_collapse():
    rows = depth_profile(audit(mlp(30)).analysis)
    assert [r.layer for r in rows] == [str(i) for i in range(0, 60, 2)]
    assert rows[0].consumer == "relu" and rows[-1].consumer == "linear"
    # default init is 1/sqrt(6) of He under ReLU: the ratio column says so for every hidden layer
    assert all(abs(r.ratio - 6 ** -0.5) < 0.03 for r in rows[1:-1])
    assert rows[-2].signal < rows[0].signal * 1e-6


def test_profile_on_the_30_layer_example():
    result = CliRunner().invoke(main, [f"{EXAMPLES / 'deep_mlp.py'}:build", "--profile"])
    lines = result.stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("layer "))
    first, last = lines[header + 2], lines[header + 2 + 29]
    assert first.split()[0] == "0" and last.split()[0] == "58"
    # the bar column shrinks from full width to a stub where the signal has died
    assert "#" * 24 in first and "#" * 3 not in last


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "profile.png"
    result = CliRunner().invoke(main, [f"{EXAMPLES / 'deep_mlp.py'}:build", "--factory-arg", "depth=16",
                                       "--plot", str(path)])
    assert result.exit_code == 1  # the findings decide the exit code, not the plot
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = CliRunner().invoke(main, [f"{EXAMPLES / 'healthy_mlp.py'}:build", "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2
    assert "pip install 'initaudit[plot]'" in result.stderr
    assert not (tmp_path / "p.png").exists()




def test_profile_lists_the_residual_stream_sum_by_sum(write_target):
    """``--profile`` also prints each residual sum: the stream's std before it, the branch's,
    and after it, each row's "after" the next row's stream (the stack is written inline)."""
    path = write_target(INLINE_RESIDUAL_STACK, name="residual_stack.py")
    result = CliRunner().invoke(main, [f"{path}:build", "--profile"])
    lines = result.stdout.splitlines()
    title = next(i for i, l in enumerate(lines) if l.startswith("Residual stream of "))
    rows = [l.split() for l in lines[title + 3:title + 6]]
    assert [r[1] for r in rows] == ["fc2.0", "fc2.1", "fc2.2"]
    stream, branch, after = (float(rows[0][i]) for i in (2, 3, 5))
    assert after == pytest.approx((stream ** 2 + branch ** 2) ** 0.5, rel=0.01)
    assert float(rows[1][2]) == pytest.approx(after, rel=0.01)
    spec = importlib.util.spec_from_file_location("residual_stack", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    embed = audit(*module.build()).recording.module("embed")  # the first stream: the embedding's output
    assert stream == pytest.approx(embed.output.std, rel=0.01)


def test_profile_of_a_plain_stack_has_no_residual_stream():
    result = CliRunner().invoke(main, [f"{EXAMPLES / 'deep_mlp.py'}:build", "--profile"])
    assert "Depth profile of " in result.stdout and "Residual stream of " not in result.stdout


def test_plot_of_a_residual_stack_draws_the_stream(write_target, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "stream.png"
    result = CliRunner().invoke(main, [f"{write_target(INLINE_RESIDUAL_STACK, name='residual_plot.py')}:build",
                                       "--plot", str(path)])
    assert result.exit_code == 0, result.output
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # a third panel, the stream: the figure is half as tall again as a plain stack's two panels
    plain = tmp_path / "plain.png"
    CliRunner().invoke(main, [f"{EXAMPLES / 'deep_mlp.py'}:build", "--factory-arg", "depth=4", "--plot", str(plain)])
    height = int.from_bytes(png[20:24], "big")
    assert height == pytest.approx(1.5 * int.from_bytes(plain.read_bytes()[20:24], "big"), rel=0.02)


def test_the_stream_bar_spans_a_decade_at_least():
    """A stream that grows by a few percent draws bars of nearly one length; one that grows
    a hundredfold draws them from a stub to the full width."""
    from initaudit.analysis.streams import StreamSum
    from initaudit.report.profile import stream_table

    def bars(sums):
        return [line.split()[-1].count("#") for line in stream_table(sums).splitlines()[2:]]

    flat = bars([StreamSum("a", 1.0, 0.2), StreamSum("b", 1.02, 0.2), StreamSum("c", 1.04, 0.2)])
    assert max(flat) - min(flat) <= 1
    steep = bars([StreamSum("a", 1.0, 0.1), StreamSum("b", 1.0, 10.0), StreamSum("c", 10.0, 100.0)])
    assert steep[0] == 1 and steep[-1] == 24
