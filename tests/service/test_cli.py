"""`heta-fast serve` options: parsed into ServiceSettings, token from the environment, bad values refused."""
from __future__ import annotations

import pytest

from heta_fast.cli import build_parser
from heta_fast.errors import ConfigError
from heta_fast.serve_cli import settings_from_args


def test_serve_options_become_settings(monkeypatch, tmp_path):
    monkeypatch.delenv("HETA_FAST_TOKEN", raising=False)
    args = build_parser().parse_args(["serve", "--port", "0", "--max-queue", "3", "--job-timeout", "2.5",
                                      "--cors-origin", "http://localhost:3000", "--results-dir", str(tmp_path)])
    assert (args.host, args.port) == ("127.0.0.1", 0)  # loopback unless told otherwise
    s = settings_from_args(args)
    assert (s.max_queue, s.job_timeout, s.cors_origins, s.token) == (3, 2.5, ("http://localhost:3000",), None)
    monkeypatch.setenv("HETA_FAST_TOKEN", "from-env")
    assert settings_from_args(args).token == "from-env"
    args.token = "flag"
    assert settings_from_args(args).token == "flag"
    assert s.batching == "auto"
    args = build_parser().parse_args(["serve", "--batch-requests", "on"])
    assert settings_from_args(args).batching == "on"


@pytest.mark.parametrize("argv", [["--port", "-1"], ["--port", "65536"], ["--port", "70000"], ["--port", "80.0"],
                                  ["--max-queue", "0"], ["--job-timeout", "nan"],
                                  ["--job-timeout", "-3"], ["--batch-requests", "always"]])
def test_bad_serve_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", *argv])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_port_beyond_65535_is_one_usage_line_not_a_traceback(capsys):
    """bind() raises OverflowError for such a port: it is refused while the arguments are parsed."""
    from heta_fast import serve_cli

    assert serve_cli.main(["--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("heta-fast: error: argument --port: must be a port number in [0, 65535], got '70000'")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert build_parser().parse_args(["serve", "--port", "65535"]).port == 65535


def test_results_dir_must_be_a_folder(tmp_path):
    args = build_parser().parse_args(["serve", "--results-dir", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="--results-dir"):
        settings_from_args(args)


def test_settings_refuse_an_unknown_batching_mode():
    from heta_fast.service.settings import ServiceSettings

    with pytest.raises(ConfigError, match="batching must be one of auto, on, off"):
        ServiceSettings(batching="always")


def test_python_m_serve_cli_is_heta_fast_serve(monkeypatch, capsys):
    """`python -m heta_fast.serve_cli ARGS` runs `heta-fast serve ARGS` through heta_fast.cli.main: its
    one-line usage errors, and the process counted as heta-fast's own only without an explicit argv."""
    import sys

    from heta_fast import cli, serve_cli

    assert serve_cli.main(["--max-queue", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    seen = []
    monkeypatch.setattr(cli, "_run", lambda args: seen.append((args.command, args.port, args.process_is_ours)) or 0)
    assert serve_cli.main(["--port", "0"]) == 0
    monkeypatch.setattr(sys, "argv", ["serve_cli", "--port", "7"])
    assert serve_cli.main() == 0
    assert seen == [("serve", 0, False), ("serve", 7, True)]
