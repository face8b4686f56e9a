"""No secret in any output, in any form: error text is built from facts we choose
(describe), and every sink (stdout, stderr, the ledger, `status`) is scrubbed as well."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scorefetch import sources
from scorefetch.collegeboard.client import CollegeBoard
from scorefetch.collegeboard.deliveries import CollegeBoardDeliveries
from scorefetch.collegeboard.settings import CollegeBoardConfig
from scorefetch.core import logs
from scorefetch.core.errors import describe
from scorefetch.core.http import HttpError, build_session
from scorefetch.core.ledger import Ledger
from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import DaemonProcess
from scorefetch.sandbox.ports import free_port
from tests.support import PRESIGNED, LogLines, assert_no_secrets

QUERY = "X-Amz-Credential=ASIA%2Fx&X-Amz-Security-Token=FwoGZXIvYXdzEKSECRET&X-Amz-Signature=f00d"


def dead_port_url(sim: CollegeBoardSimulator) -> Callable[[str], str]:
    port = free_port()
    return lambda url: url.replace(f":{sim.download_port}/", f":{port}/")


@pytest.mark.parametrize(
    "url",
    [f"http://127.0.0.1:9/b/4300.csv?{QUERY}", f"http://127.0.0.1:9/b/%2e%2e?{QUERY}"],
)
def test_describe_never_repeats_the_library_message(url: str) -> None:
    """urllib3's errors quote the path-only form with its query; describe names the class,
    the cause, the errno and the host instead, and the error we raise says nothing else."""
    with pytest.raises(HttpError) as caught:
        build_session(connect_timeout=1).get(url)
    assert "X-Amz" not in repr(caught.value) and caught.value.__cause__ is None
    text = describe(caught.value)
    assert not PRESIGNED.search(text) and "?" not in text and "SECRET" not in text
    assert text.startswith("ConnectFailed") and "ECONNREFUSED" in text and "127.0.0.1" in text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Max retries exceeded with url: /b/4300.csv?{QUERY} (Caused by ...)", "f00d"),
        (f"Retrying (Retry(total=1)) after connection broken by 'X': /b/x.csv?{QUERY}", "SECRET"),
        (f"GET /b/x.csv?{QUERY} HTTP/1.1", "SECRET"),
        ('body {"username": "u", "password": "hunter2"}', "hunter2"),
        ("{'sessionToken': 'eyJhbGciOi.payload.sig'}", "eyJhbGciOi"),
        ("headers: x-api-key: k3y-V4LUE, Authorization: JWT eyJhbG.x.y", "k3y-V4LUE"),
        ("Authorization: JWT eyJhbG.x.y", "eyJhbG"),
        ("GET /pascoredwnld/file?tok=45B5B7E7-SECRET&filename=a.csv", "45B5B7E7"),
        ("password=hunter2&user=x", "hunter2"),
    ],
)
def test_scrub_text_catches_every_form(text: str, secret: str) -> None:
    """Path-only queries, secret-named parameters, JSON members and headers all go."""
    assert secret not in logs.scrub_text(text)


def test_scrub_text_leaves_ordinary_text() -> None:
    """Names, paths, hosts and numbers stay readable."""
    text = "download failed: ConnectionError (ECONNREFUSED) from 127.0.0.1 /var/lib/a.csv"
    assert logs.scrub_text(text) == text


def test_dead_port_leaks_nowhere(
    cb_sim: CollegeBoardSimulator,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    log_lines: LogLines,
) -> None:
    """A download to a dead port: the log line, stderr (urllib3's Retrying warnings) and
    the ledger's error column hold no signature, token or credential."""
    cb_sim.publish("4300_20261121_101544.csv", b"1\n")
    cb_sim.hostile.rewrite_url = dead_port_url(cb_sim)
    config = CollegeBoardConfig(
        base_url=cb_sim.base_url,
        username=cb_sim.username,
        password=cb_sim.password,
        download_hosts=(cb_sim.download_host,),
    )
    deliveries = CollegeBoardDeliveries(
        CollegeBoard(config, build_session(connect_timeout=1)),
        Ledger(tmp_path / "l.sqlite3"),
        tmp_path / "files",
    )
    name = "4300_20261121_101544.csv"
    deliveries.ledger.claim("collegeboard", name, name, "notification")
    try:
        assert deliveries.deliver(name) is None
    finally:
        deliveries.close(5)
    row = deliveries.ledger.get("collegeboard", name)
    assert row is not None and row.error and "ECONNREFUSED" in row.error
    out, err = capfd.readouterr()
    lines = [*log_lines.getvalue().splitlines(), *out.splitlines(), *err.splitlines(), row.error]
    assert_no_secrets(lines, [cb_sim.password])
    assert "Retrying" not in err


def test_stdlib_records_reaching_stderr_are_scrubbed(
    capfd: pytest.CaptureFixture[str], log_lines: LogLines
) -> None:
    """Any library that logs at WARNING or above reaches stderr scrubbed."""
    logging.getLogger("some.library").warning("failed: GET /x.csv?%s", QUERY)
    logging.getLogger("urllib3.connectionpool").error("broken: /x.csv?%s", QUERY)
    err = capfd.readouterr().err
    assert "failed: GET /x.csv?…" in err and not PRESIGNED.search(err)


def test_status_scrubs_rows_older_versions_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error column an older version filled with a presigned path is shown scrubbed."""
    from scorefetch.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(f"download_dir: {tmp_path / 'files'}\nstate_dir: {tmp_path / 'state'}\n")
    Ledger(tmp_path / "state" / "ledger.sqlite3").claim("collegeboard", "a.csv", "a.csv", "n")
    with sqlite3.connect(tmp_path / "state" / "ledger.sqlite3") as db:
        db.execute(
            "UPDATE deliveries SET state = 'failed', error = ?",
            (f"download failed: ConnectionError: Max retries with url: /b/a.csv?{QUERY}",),
        )
    for argv in (["status", "-c", str(config)], ["status", "-c", str(config), "--json"]):
        main(argv)
        out = capsys.readouterr().out
        assert "a.csv" in out and not PRESIGNED.search(out) and "SECRET" not in out


@pytest.mark.e2e
def test_daemon_dead_port_prints_no_secret(
    start_daemon: Callable[..., DaemonProcess],
    cb_sim: CollegeBoardSimulator,
    imap_server: Any,
    imap_folder: str,
) -> None:
    """The reported case, end to end: the daemon downloading from a dead port writes no
    presigned query to stdout or stderr (the fixture checks every line at teardown)."""
    cb_sim.publish("4300_20261121_101544.csv", b"1\n")
    cb_sim.hostile.rewrite_url = dead_port_url(cb_sim)
    daemon = start_daemon()
    with imap_server.client() as client:
        client.append(imap_folder, mail.notification("4300_20261121_101544.csv"))
    event = daemon.wait_event("delivery.failed", timeout=30)
    assert "ECONNREFUSED" in str(event.get("error"))
    assert daemon.stop() == 0
    assert not any("Retrying" in line for line in daemon.lines)


@pytest.mark.parametrize(
    "text",
    [
        'imap:\n  password: "hunter2-SECRET\n  x: [\n',
        "imap:\n  password: hunter2-SECRET: x\n",
        "imap:\n  password: [hunter2-SECRET\n",
        "imap:\n\tpassword: hunter2-SECRET\n",
    ],
)
def test_yaml_syntax_errors_do_not_quote_the_line(tmp_path: Path, text: str) -> None:
    """PyYAML's message quotes the offending line, perhaps a password: the error names
    the line and column and the problem, not the text."""
    from scorefetch.core.errors import ConfigError

    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        sources.load(path, {})
    assert "not valid YAML" in str(caught.value) and "line " in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_describe_a_timeout_without_errno_says_it_timed_out() -> None:
    """socket.timeout has no errno: it is "timed out", never os.strerror(0)'s "Success"
    (an IMAP connect that timed out was logged as `TimeoutError: Success`)."""
    from scorefetch.core.errors import describe

    assert describe(TimeoutError("timed out")) == "TimeoutError: timed out"  # socket.timeout
    assert describe(TimeoutError()) == "TimeoutError: timed out"
    assert "Success" not in describe(OSError())
