"""The helpers the CLI tests share: run ``morphlm ARGS...`` in-process and check its exit code; the checks every
``morphlm bench NAME`` command and its script under ``benchmarks/`` must pass."""

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from morphlm.cli import app

runner = CliRunner()


def cli(*args, code=0):
    """Invoke the CLI with ``args`` (stringified); assert the exit code unless ``code`` is None."""
    res = runner.invoke(app, [str(a) for a in args])
    if code is not None:
        assert res.exit_code == code, f"exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res


def check_table_errors(bench, tmp_path, junk_words=None):
    """``morphlm bench BENCH --table``: a missing results file fails with "does not exist", a JSON that is not
    this benchmark's results with ``junk_words`` (default: "not a `morphlm bench BENCH` results file")."""
    missing = cli("bench", bench, "--table", "--out", tmp_path / "none.json", code=None)
    assert missing.exit_code != 0 and "does not exist" in missing.output
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"benchmark": "another"}))
    bad = cli("bench", bench, "--table", "--out", junk, code=None)
    words = junk_words or f"not a `morphlm bench {bench}` results file"
    assert bad.exit_code != 0 and words in bad.output, bad.output


def check_script_is_the_cli(script_name, tmp_path, capsys):
    """``benchmarks/<script_name>.py`` runs its ``morphlm bench`` command: ``--table`` of a missing file exits with
    the command's named error."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{script_name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{script_name}_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exc:  # typer exits; a missing results file is a named error
        script.main(["--table", "--out", str(tmp_path / "none.json")])
    captured = capsys.readouterr()
    assert exc.value.code != 0 and "does not exist" in captured.out + captured.err


def ctrl_c_in_fit(monkeypatch, step=2):
    """Make every ``morphlm.train.loop.fit`` of the test send this process a real SIGINT after training step
    ``step`` of the first run that reaches it; returns ``(fired, real_fit)``: the steps it fired at, and the
    unpatched ``fit`` to put back."""
    import os
    import signal

    import morphlm.train.loop as loop

    real_fit, fired = loop.fit, []

    class CtrlC:
        def on_step_end(self, state, record):
            if state.step == step and not fired:
                fired.append(state.step)
                os.kill(os.getpid(), signal.SIGINT)

    def fit_with_ctrl_c(model, loss_fn, data, args, callbacks=(), **kw):
        return real_fit(model, loss_fn, data, args, [*callbacks, CtrlC()], **kw)

    monkeypatch.setattr(loop, "fit", fit_with_ctrl_c)
    return fired, real_fit
