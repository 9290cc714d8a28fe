"""The one helper the CLI tests share: run ``morphlm ARGS...`` in-process and check its exit code."""

from typer.testing import CliRunner

from morphlm.cli import app

runner = CliRunner()


def cli(*args, code=0):
    """Invoke the CLI with ``args`` (stringified); assert the exit code unless ``code`` is None."""
    res = runner.invoke(app, [str(a) for a in args])
    if code is not None:
        assert res.exit_code == code, f"exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res
