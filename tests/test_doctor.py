"""`scorefetch doctor` against the real sandbox: every check passes on a good deployment,
and each kind of breakage is one FAIL line saying what to do, with no secret shown."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scorefetch import doctor, sources
from scorefetch.cli import main
from scorefetch.core.errors import ScorefetchError
from scorefetch.core.ledger import Ledger
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import write_config
from scorefetch.sandbox.encoura import EncouraSimulator
from scorefetch.sandbox.imapserver import PymapServer
from scorefetch.sandbox.ports import free_port

pytestmark = pytest.mark.e2e  # the sandbox servers and real sockets


@pytest.fixture
def enc_sim() -> Iterator[EncouraSimulator]:
    with EncouraSimulator() as sim:
        yield sim


@pytest.fixture
def cfg(
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    enc_sim: EncouraSimulator,
    pymap_server: PymapServer,
) -> Path:
    return write_config(tmp_path, cb_sim, pymap_server, encoura=enc_sim)


def doctor_run(
    capsys: pytest.CaptureFixture[str], cfg: Path, *extra: str
) -> tuple[int, dict[str, dict[str, object]], str]:
    """Exit code, the checks by name (from --json), and the text output of a second run."""
    code = main(["doctor", "-c", str(cfg), "--json", *extra])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is (code == 0)
    assert main(["doctor", "-c", str(cfg)]) == code
    text = capsys.readouterr().out
    return code, {c["name"]: c for c in report["checks"]}, text


def secrets_of(*sims: object) -> list[str]:
    found = []
    for sim in sims:
        for attr in ("password", "api_key"):
            value = getattr(sim, attr, None)
            if isinstance(value, str):
                found.append(value)
    return found


def test_good_deployment_passes_every_check(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cfg: Path,
    cb_sim: CollegeBoardSimulator,
    enc_sim: EncouraSimulator,
    pymap_server: PymapServer,
) -> None:
    """Config, folders, ledger, IMAP, College Board, Encoura and the clock are `ok`, one line
    each, exit 0; the folders it probed are gone again and no vendor export was marked."""
    waiting = enc_sim.add_export("score-reporter", "waiting.csv", b"a\n")
    code, checks, text = doctor_run(capsys, cfg)
    assert code == 0, text
    assert list(checks) == [
        "config",
        "folders",
        "ledger",
        "disk",
        "imap",
        "collegeboard",
        "encoura",
        "clock",
    ]
    assert [line.split()[:2] for line in text.splitlines()] == [["ok", n] for n in checks]
    assert "IDLE offered" in str(checks["imap"]["detail"])
    assert not (tmp_path / "files").exists() and not (tmp_path / "state").exists()
    assert enc_sim.export(waiting)["status"] == "NotDelivered"
    for secret in secrets_of(cb_sim, enc_sim, pymap_server):
        assert secret not in text


@pytest.mark.parametrize(
    "breakage, failing, advice",
    [
        ("imap_password", "imap", "check imap.username and the password"),
        ("collegeboard_password", "collegeboard", "password expires periodically"),
        ("encoura_api_key", "encoura", "check encoura.api_key"),
    ],
)
def test_refused_credentials_fail_their_check(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cfg: Path,
    breakage: str,
    failing: str,
    advice: str,
) -> None:
    """A wrong secret is a FAIL on its own line with what to do; the other checks still run,
    and the wrong secret is not shown either."""
    wrong = "Wr0ng-but-secret-123"
    (tmp_path / "credentials" / breakage).write_text(wrong + "\n")
    code, checks, text = doctor_run(capsys, cfg)
    assert code == 1
    assert [name for name, c in checks.items() if not c["ok"]] == [failing]
    assert advice in str(checks[failing]["advice"])
    line = next(line for line in text.splitlines() if line.split()[1] == failing)
    assert line.startswith("FAIL") and "→" in line
    assert wrong not in text


def test_unreachable_mailbox_and_skewed_clock(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    pymap_server: PymapServer,
) -> None:
    """Nothing listening at the IMAP address fails `imap`; a vendor whose Date is a minute
    ahead of ours fails `clock` (15-second URLs, TLS and tokens need a right clock)."""
    cfg = write_config(tmp_path, cb_sim, pymap_server, imap_address=("127.0.0.1", free_port()))
    cb_sim.clock_offset_s = 60
    code, checks, _ = doctor_run(capsys, cfg)
    assert code == 1
    assert "cannot connect" in str(checks["imap"]["detail"])
    assert not checks["clock"]["ok"]
    assert "behind College Board" in str(checks["clock"]["detail"])
    assert "synchronise the clock" in str(checks["clock"]["advice"])


def test_folder_that_cannot_be_written(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    pymap_server: PymapServer,
) -> None:
    """A download folder that cannot be made (a file is in the way; root can write anywhere
    else) fails `folders` and names it."""
    cfg = write_config(tmp_path, cb_sim, pymap_server)
    (tmp_path / "blocked").write_text("a file, not a folder\n")
    text = cfg.read_text().replace(str(tmp_path / "files"), str(tmp_path / "blocked" / "files"))
    cfg.write_text(text)
    code, checks, _ = doctor_run(capsys, cfg)
    assert code == 1
    assert not checks["folders"]["ok"]
    assert str(tmp_path / "blocked" / "files") in str(checks["folders"]["detail"])


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_disk_nearly_full_fails_doctor(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    pymap_server: PymapServer,
) -> None:
    """A download folder on a 64 MiB file system (less than the 1 GiB doctor wants free, and
    than the largest file College Board may send) fails `disk` and names the folder."""
    from tests.test_local_faults import tmpfs

    cfg = write_config(tmp_path, cb_sim, pymap_server)
    with tmpfs(tmp_path / "files", "64m"):
        code, checks, text = doctor_run(capsys, cfg)
    assert code == 1 and not checks["disk"]["ok"]
    assert str(tmp_path / "files") in str(checks["disk"]["detail"]) and "free" in text


def test_a_metrics_port_another_process_holds_fails_doctor(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    pymap_server: PymapServer,
) -> None:
    """metrics.listen on a port another process listens on: `metrics` fails (else `run`
    would exit 1 and be restarted for ever); once free, it passes."""
    import socket

    cfg = write_config(tmp_path, cb_sim, pymap_server)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    cfg.write_text(cfg.read_text() + f"metrics:\n  listen: 127.0.0.1:{port}\n")
    try:
        code, checks, _ = doctor_run(capsys, cfg)
    finally:
        holder.close()
    assert code == 1 and not checks["metrics"]["ok"]
    assert "second instance" in str(checks["metrics"]["advice"])
    _, checks, _ = doctor_run(capsys, cfg)
    assert checks["metrics"]["ok"]


def test_existing_ledger_is_checked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cfg: Path
) -> None:
    """A ledger already there is opened read-only and checked intact; a corrupt one fails."""
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.claim("collegeboard", "a.csv", "a.csv", "notification")
    ledger.close()
    _, checks, _ = doctor_run(capsys, cfg)
    assert checks["ledger"]["ok"] and "1 deliveries" in str(checks["ledger"]["detail"])
    (tmp_path / "state" / "ledger.sqlite3").write_bytes(b"not a database" * 100)
    code, checks, _ = doctor_run(capsys, cfg)
    assert code == 1 and not checks["ledger"]["ok"]


def test_config_error_is_exit_78_with_a_config_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An invalid config is one `FAIL config` line naming the key (or JSON), exit 78."""
    bad = tmp_path / "config.yaml"
    bad.write_text("download_dir: /x\nstate_dir: /y\ncollegeboard: {formats: [xls]}\n")
    assert main(["doctor", "-c", str(bad)]) == 78
    out = capsys.readouterr().out
    assert out.startswith("FAIL  config") and "collegeboard.formats[0]" in out
    assert main(["doctor", "-c", str(bad), "--json"]) == 78
    assert json.loads(capsys.readouterr().out)["checks"][0]["name"] == "config"


class _Destination:
    """What doctor needs of a forward destination: a name and probe()."""

    def __init__(self, name: str, error: str | None) -> None:
        self.name = name
        self._error = error

    def probe(self) -> str:
        if self._error:
            raise ScorefetchError(self._error)
        return "host key matches, logged in, probe written and removed in /incoming"


def test_forward_destinations_are_probed(tmp_path: Path, cfg: Path) -> None:
    """Each destination is a `forward.<name>` line from its probe(); a failing probe is a
    FAIL that says where to look."""
    config = sources.load(cfg)
    checks = doctor.run(
        config,
        [_Destination("slate", None), _Destination("dr", "refused")],
        sources=sources.SOURCES,
    )
    by_name = {c.name: c for c in checks}
    assert by_name["forward.slate"].ok
    assert not by_name["forward.dr"].ok and "host_key" in by_name["forward.dr"].advice


def test_missing_hook_program_fails(tmp_path: Path, cfg: Path) -> None:
    """A configured hook that is not an executable file fails `hooks` before it is needed."""
    with cfg.open("a") as out:
        out.write("hooks:\n  on_failure: [/nonexistent/mail-office, it@example.edu]\n")
    checks = {c.name: c for c in doctor.run(sources.load(cfg), sources=sources.SOURCES)}
    assert not checks["hooks"].ok and "/nonexistent/mail-office" in checks["hooks"].detail


def alert_config(tmp_path: Path, exit_code: int) -> tuple[Path, Path]:
    """A config with only folders and an on_failure hook that records each run."""
    record = tmp_path / "alerts"
    hook = tmp_path / "hook"
    hook.write_text(f'#!/bin/sh\necho "$SCOREFETCH_EVENT $1" >> {record}\nexit {exit_code}\n')
    hook.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"download_dir: {tmp_path / 'files'}\nstate_dir: {tmp_path / 'state'}\n"
        f"hooks:\n  on_failure: [{hook}, it@example.edu]\n"
    )
    return config, record


def test_test_alert_runs_on_failure_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`doctor --test-alert` runs hooks.on_failure once, with its arguments and
    SCOREFETCH_EVENT=test, and reports it; plain `doctor` runs no hook."""
    config, record = alert_config(tmp_path, 0)
    assert main(["doctor", "-c", str(config)]) == 0
    assert not record.exists()
    assert main(["doctor", "-c", str(config), "--test-alert"]) == 0
    assert record.read_text() == "test it@example.edu\n"
    assert "ok    test-alert" in capsys.readouterr().out


def test_failing_test_alert_fails_doctor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hook that exits non-zero for the test event makes doctor exit 1 with a FAIL line."""
    config, record = alert_config(tmp_path, 3)
    assert main(["doctor", "-c", str(config), "--test-alert"]) == 1
    assert record.read_text() == "test it@example.edu\n"
    assert "FAIL  test-alert" in capsys.readouterr().out
