"""The command line refuses arguments that cannot work, before anything starts."""

from __future__ import annotations

import pytest

from app.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "70000"],
        ["serve", "--port", "-1"],
        ["serve", "--port", "http"],
        ["serve", "--workers", "0"],
        ["serve", "--workers", "-1"],
        ["dev", "--port", "65536"],
        ["flush", "--metrics-port", "99999"],
    ],
)
def test_bad_ports_and_worker_counts_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "error: argument --" in capsys.readouterr().err


def test_good_ports_and_worker_counts_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--port", "0", "--workers", "3"])
    assert (args.port, args.workers) == (0, 3)
    assert build_parser().parse_args(["serve", "--port", "65535"]).port == 65535
    monkeypatch.setenv("PORT", "9090")
    assert build_parser().parse_args(["dev"]).port == 9090
    monkeypatch.setenv("PORT", "nope")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dev"])
