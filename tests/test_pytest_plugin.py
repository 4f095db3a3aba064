"""The pytest plugin, exercised through real pytest sub-runs (pytester), not mocks."""

import subprocess
import sys
import textwrap

from conftest import EXAMPLES

MODELS = f"""
import sys
sys.path.insert(0, {str(EXAMPLES)!r})
import torch
import pytest
import zero_hidden, shared_linear, healthy_mlp
"""


def test_fixture_fails_with_the_table_and_passes_when_clean(pytester):
    pytester.makepyfile(
        MODELS
        + textwrap.dedent(
            """
            def test_broken(initaudit):
                initaudit.check(zero_hidden.build())

            def test_healthy(initaudit):
                report = initaudit.check(healthy_mlp.build(), torch.randn(8, 64))
                assert report.findings == []
            """
        )
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*initaudit: * finding(s) at or above 'warning'*",
        "*IA101*error*2.weight*",
        "*FAILED test_fixture_fails_with_the_table_and_passes_when_clean.py::test_broken*",
    ])


def test_helper_assert_init_ok(pytester):
    pytester.makepyfile(
        MODELS
        + textwrap.dedent(
            """
            from initaudit.testing import assert_init_ok

            def test_broken():
                assert_init_ok(shared_linear.build())

            def test_broken_but_only_errors_fail():
                assert_init_ok(shared_linear.build(), fail_on="error")

            def test_ignored():
                assert_init_ok(zero_hidden.build(), select=["IA1"], ignore=["IA101"])
            """
        )
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*IA401*warning*", "*FAILED*::test_broken -*"])


def test_marker_sets_options_for_one_test(pytester):
    pytester.makepyfile(
        MODELS
        + textwrap.dedent(
            """
            @pytest.mark.initaudit(fail_on="error")
            def test_warning_tolerated(initaudit):
                initaudit.check(shared_linear.build())

            @pytest.mark.initaudit(select=["IA1"], ignore=["IA101"])
            def test_ignored(initaudit):
                initaudit.check(zero_hidden.build())

            def test_unmarked(initaudit):
                initaudit.check(shared_linear.build())
            """
        )
    )
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*::test_unmarked*"])


def test_fixture_reads_pyproject_and_the_call_overrides(pytester):
    pytester.makepyprojecttoml(
        """
        [tool.initaudit]
        fail-on = "error"
        """
    )
    pytester.makepyfile(
        MODELS
        + textwrap.dedent(
            """
            def test_config_tolerates_warnings(initaudit):
                initaudit.check(shared_linear.build())

            def test_call_overrides_config(initaudit):
                initaudit.check(shared_linear.build(), fail_on="warning")
            """
        )
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAILED*::test_call_overrides_config*"])


def test_option_adds_one_item_per_target(pytester):
    bad = f"{EXAMPLES / 'zero_hidden.py'}:build"
    good = f"{EXAMPLES / 'healthy_mlp.py'}:build"
    result = pytester.runpytest("--initaudit", bad, "--initaudit", good, "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        f"initaudit[[]{bad}] FAILED*",
        f"initaudit[[]{good}] PASSED*",
        "*initaudit: * finding(s) at or above 'warning' in*zero_hidden.py:build*",
        "*IA101*error*",
    ])


def test_option_takes_one_value_so_test_paths_after_it_stay_paths(pytester):
    pytester.makepyfile(test_here="def test_ordinary():\n    assert True\n")
    pytester.makepyfile(test_elsewhere="def test_not_collected():\n    assert False\n")
    bad = f"{EXAMPLES / 'zero_hidden.py'}:build"
    good = f"{EXAMPLES / 'healthy_mlp.py'}:build"
    result = pytester.runpytest("--initaudit", f"{bad},{good}", "test_here.py", "-v")
    result.assert_outcomes(passed=2, failed=1)  # the two audits and test_here; not test_elsewhere
    result.stdout.fnmatch_lines(["*test_here.py::test_ordinary PASSED*"])


def test_option_target_that_cannot_load_fails_with_one_line(pytester):
    result = pytester.runpytest("--initaudit", "missing.py:build")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*initaudit: error: file not found: missing.py*"])
    assert "Traceback" not in result.stdout.str()


def test_option_items_run_beside_ordinary_tests(pytester):
    pytester.makepyfile("def test_ordinary():\n    assert True\n")
    result = pytester.runpytest("--initaudit", f"{EXAMPLES / 'healthy_mlp.py'}:build")
    result.assert_outcomes(passed=2)


def test_bad_config_is_a_usage_error(pytester):
    pytester.makepyprojecttoml("[tool.initaudit]\nfail_on = 'error'\n")
    pytester.makepyfile(MODELS + "\ndef test_x(initaudit):\n    initaudit.check(healthy_mlp.build())\n")
    result = pytester.runpytest()
    assert result.ret != 0
    assert "unknown key(s) 'fail_on'" in result.stdout.str() + result.stderr.str()


def test_the_plugin_does_not_import_torch_until_a_test_audits():
    # pytest loads the plugin in every project where initaudit is installed: a project that
    # never audits must not pay for importing torch at every start
    code = textwrap.dedent(
        """
        import sys
        import initaudit, initaudit.pytest_plugin
        assert "torch" not in sys.modules, "imported at start-up"
        assert initaudit.__version__
        from initaudit import audit, Report
        assert "torch" in sys.modules and callable(audit) and Report.__name__ == "Report"
        assert "audit" in dir(initaudit)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
