"""The README's install path, end to end, as root on this machine: `make install` into a
temporary root, the config and secrets put where the README says, the README's
`check-config` as the service user, then the installed unit's own ExecStart= line run
as its User= with $CREDENTIALS_DIRECTORY laid out as LoadCredential= would, until a
file lands. Everything is removed again (and the user, if this test made it)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scorefetch.sandbox import mail
from scorefetch.sandbox.collegeboard import CollegeBoardSimulator
from scorefetch.sandbox.daemon import write_config
from scorefetch.sandbox.imapserver import PymapServer
from tests.support import assert_no_secrets

REPO = Path(__file__).resolve().parents[1]
USER = "scorefetch"
RUNUSER, SETPRIV = shutil.which("runuser"), shutil.which("setpriv")

pytestmark = [
    pytest.mark.install,
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs system-wide: needs root"),
    pytest.mark.skipif(
        not (shutil.which("useradd") and SETPRIV and RUNUSER),
        reason="needs useradd, setpriv and runuser (util-linux, passwd)",
    ),
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3"),
]


def user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


def owner(path: Path) -> tuple[str, str, int]:
    import grp

    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777


def make_vars(paths: dict[str, Path]) -> list[str]:
    return [f"{k}={v}" for k, v in paths.items()] + ["SYSTEMCTL=true"]


def make_install(
    paths: dict[str, Path], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`make install` into the temporary root, with `env` over this process's."""
    return subprocess.run(
        ["make", "--no-print-directory", "install", *make_vars(paths)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def temp_root() -> Iterator[dict[str, Path]]:
    """The make variables of a temporary root; uninstalled and removed afterwards (and
    the user too, if it was made here)."""
    had_user = user_exists()
    root = Path(tempfile.mkdtemp(prefix="scorefetch-install-", dir="/var/tmp"))
    root.chmod(0o755)
    paths = {
        "PREFIX": root / "opt" / "scorefetch",
        "CONFDIR": root / "etc" / "scorefetch",
        "STATEDIR": root / "var" / "lib" / "scorefetch",
        "UNITDIR": root / "etc" / "systemd" / "system",
        "BINDIR": root / "usr" / "local" / "bin",
    }
    try:
        yield paths
    finally:
        subprocess.run(
            ["make", "--no-print-directory", "uninstall", *make_vars(paths)],
            cwd=REPO,
            capture_output=True,
            timeout=120,
        )
        assert not paths["PREFIX"].exists() and not paths["PREFIX"].is_symlink()
        assert not (paths["BINDIR"] / "scorefetch").is_symlink()
        shutil.rmtree(root, ignore_errors=True)
        if not had_user:
            subprocess.run(["userdel", USER], capture_output=True, timeout=30)
            subprocess.run(["groupdel", USER], capture_output=True, timeout=30)


@pytest.fixture
def installed(temp_root: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """`make install` into a temporary root, with a broken `python3` first on PATH (the
    pyenv interpreter under /root that the service user cannot run)."""
    decoy = tmp_path / "decoy-bin"
    decoy.mkdir()
    (decoy / "python3").write_text("#!/bin/sh\necho 'the wrong python3' >&2\nexit 99\n")
    (decoy / "python3").chmod(0o755)
    done = make_install(temp_root, {"PATH": f"{decoy}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return temp_root


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            settings.setdefault(match.group(1), []).append(match.group(2))
    return settings


class Started:
    """The unit's ExecStart= as a child; its JSON log lines kept."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            umask=0o077,  # the unit's UMask=
            cwd="/",
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip())
                self._cond.notify_all()

    def wait_event(self, name: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    seen += 1
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("event") == name and all(
                        event.get(k) == v for k, v in fields.items()
                    ):
                        return dict(event)
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, "\n".join(self.lines[-20:])
                self._cond.wait(min(left, 0.2))


def as_service(settings: dict[str, list[str]], line: str) -> list[str]:
    """A unit command line run as its User=/Group= with no new privileges."""
    (user,), (group,) = settings["User"], settings["Group"]
    return [
        str(SETPRIV),
        f"--reuid={user}",
        f"--regid={group}",
        "--init-groups",
        "--no-new-privs",
        "--",
        *shlex.split(line),
    ]


CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def configure(
    paths: dict[str, Path], tmp_path: Path, cb_sim: CollegeBoardSimulator, imap: PymapServer
) -> tuple[Path, str]:
    """What the IT person does after `make install` (README): the config edited, the
    secrets put in CONFDIR. The config's path and text."""
    confdir = paths["CONFDIR"]
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    text = write_config(scratch, cb_sim, imap).read_text()
    text = text.replace("credentials/", "").replace(str(scratch), str(paths["STATEDIR"]))
    config = confdir / "config.yaml"
    config.write_text(text)  # an edit keeps the file's owner and mode
    for name, secret in (
        ("imap_password", imap.password),
        ("collegeboard_password", cb_sim.password),
    ):
        subprocess.run(
            ["install", "-m", "0640", "-g", USER, "/dev/stdin", str(confdir / name)],
            input=secret + "\n",
            text=True,
            check=True,
            timeout=30,
        )
    return config, text


def as_the_unit(paths: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    """The installed unit's ExecStart= as its User=, and its environment with
    $CREDENTIALS_DIRECTORY laid out as its LoadCredential= lines would."""
    settings = unit_settings(paths["UNITDIR"] / "scorefetch.service")
    assert "ExecStartPre" not in settings
    # Like /run/credentials/scorefetch.service: inside the (world-traversable) test root.
    credentials = paths["PREFIX"].parents[1] / "run" / "credentials" / "scorefetch.service"
    shutil.rmtree(credentials, ignore_errors=True)
    credentials.mkdir(parents=True)
    user = pwd.getpwnam(USER)
    for spec in settings["LoadCredential"]:
        name, source = spec.split(":", 1)
        shutil.copyfile(source, credentials / name)
        (credentials / name).chmod(0o400)
        os.chown(credentials / name, user.pw_uid, user.pw_gid)
    credentials.chmod(0o500)
    os.chown(credentials, user.pw_uid, user.pw_gid)
    (exec_start,) = settings["ExecStart"]
    return as_service(settings, exec_start), CLEAN_ENV | {"CREDENTIALS_DIRECTORY": str(credentials)}


def test_readme_install_path_lands_a_file(
    installed: dict[str, Path],
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    pymap_server: PymapServer,
) -> None:
    """Installed with the system python3, modes right for the service user; the README's
    check-config as that user works; the unit's ExecStart= as User= with LoadCredential=
    secrets lands a file owned by the user; a broken config is exit 78 (no restart)."""
    prefix, confdir, statedir = installed["PREFIX"], installed["CONFDIR"], installed["STATEDIR"]
    assert (prefix / "bin" / "python").resolve().parent == Path("/usr/bin")
    assert owner(confdir) == ("root", USER, 0o750)
    assert owner(confdir / "config.yaml") == ("root", USER, 0o640)
    assert owner(statedir) == (USER, USER, 0o700)
    assert (prefix / "contrib" / "mail-office").stat().st_mode & 0o111
    import_metrics = [str(prefix / "bin" / "python"), "-c", "import scorefetch.observers.metrics"]
    assert subprocess.run(import_metrics, capture_output=True, timeout=60).returncode == 0
    # The wheel ships the demo's sandbox, never the tests' faults and hostile mode.
    where = [str(prefix / "bin" / "python"), "-c", "import scorefetch; print(scorefetch.__file__)"]
    found = subprocess.run(where, capture_output=True, text=True, timeout=60).stdout.strip()
    package = Path(found).parent
    assert (package / "sandbox" / "collegeboard.py").is_file()
    assert not (package / "sandbox" / "hostile.py").exists()
    shipped = "".join(path.read_text() for path in package.rglob("*.py"))
    assert "def inject(" not in shipped and "clear_faults" not in shipped

    config, text = configure(installed, tmp_path, cb_sim, pymap_server)
    program = str(prefix / "bin" / "scorefetch")
    for command in ("check-config", "doctor"):
        checked = subprocess.run(
            [str(RUNUSER), "-u", USER, "--", program, command, "-c", str(config)],
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert_no_secrets(
            [checked.stdout, checked.stderr], [pymap_server.password, cb_sim.password]
        )

    # The unit as systemd would run it.
    argv, env = as_the_unit(installed)
    daemon = Started(argv, env)
    try:
        daemon.wait_event("daemon.ready")
        cb_sim.publish("4300_20261121_120000.csv", b"id,score\r\n1,1400\r\n")
        pymap_server.deliver(mail.notification("4300_20261121_120000.csv"))
        landed = daemon.wait_event("delivery.downloaded", filename="4300_20261121_120000.csv")
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=60)
    assert code == 0
    target = Path(landed["path"])
    assert target.read_bytes() == b"id,score\r\n1,1400\r\n"
    assert owner(target) == (USER, USER, 0o600)
    assert_no_secrets(daemon.lines, [pymap_server.password, cb_sim.password])

    config.write_text(text.replace("formats: [csv]", "formats: [xls]"))
    broken = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 78, broken.stderr
    assert "collegeboard.formats[0]" in broken.stderr


def test_installed_units_verify(installed: dict[str, Path]) -> None:
    """Both installed units pass `systemd-analyze verify` with the installed program."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unitdir = installed["UNITDIR"]
    for unit in ("scorefetch.service", "scorefetch@inst.service"):
        done = subprocess.run(
            [analyze, "verify", str(unitdir / unit)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_upgrade_keeps_edits_and_a_failed_one_changes_nothing(
    installed: dict[str, Path], tmp_path: Path
) -> None:
    """A second install keeps the admin's edited unit (the new one beside it as .new, and
    says so) and the drop-in; one whose pip cannot reach any index fails and leaves the
    installed program as it was, running."""
    prefix, unitdir, bindir = installed["PREFIX"], installed["UNITDIR"], installed["BINDIR"]
    program = prefix / "bin" / "scorefetch"
    assert prefix.is_symlink() and (bindir / "scorefetch").resolve() == program.resolve()
    dropin = unitdir / "scorefetch.service.d" / "local.conf"
    assert "LoadCredential=" in dropin.read_text()  # documented there, commented out
    unit = unitdir / "scorefetch.service"
    edited = unit.read_text() + "# the admin's own line\n"
    unit.write_text(edited)
    dropin.write_text("[Service]\nLoadCredential=encoura_api_key:/etc/scorefetch/encoura_api_key\n")
    site = dropin.read_text()
    template = (unitdir / "scorefetch@.service").read_text()

    upgraded = make_install(installed)
    assert upgraded.returncode == 0, upgraded.stdout[-3000:] + upgraded.stderr[-3000:]
    assert unit.read_text() == edited and dropin.read_text() == site
    assert (unitdir / "scorefetch.service.new").read_text() + "# the admin's own line\n" == edited
    assert f"kept your edited {unit}" in upgraded.stdout
    assert (unitdir / "scorefetch@.service").read_text() == template  # unedited: replaced as is
    assert not (unitdir / "scorefetch@.service.new").exists()
    assert "Next:" in upgraded.stdout.splitlines()[-2]

    release = prefix.resolve()
    nowhere = tmp_path / "no-wheels"
    nowhere.mkdir()
    offline = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(nowhere)}
    failed = make_install(installed, offline)
    assert failed.returncode != 0
    assert "is unchanged" in failed.stderr
    assert prefix.resolve() == release
    assert sorted(p.name for p in prefix.parent.glob("scorefetch*")) == sorted(
        ["scorefetch", "scorefetch.releases"]
    )
    version = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("scorefetch ")


# main before issue 21: `make install` made /opt/scorefetch a plain virtualenv (venv --clear)
# and overwrote the units every time.
PREVIOUS_RELEASE = "dc1c0cb11efa06f0eca8a550fea147a491502e62"


def install_previous_release(paths: dict[str, Path], tmp_path: Path) -> None:
    """The previous release's own `make install`, from its tree in git history."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE], capture_output=True, timeout=120
    )
    if archive.returncode != 0:
        pytest.skip("the previous release is not in this clone's history")
    old = tmp_path / "previous"
    old.mkdir()
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True, timeout=120)
    done = subprocess.run(
        ["make", "--no-print-directory", "install", *make_vars(paths)],
        cwd=old,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_upgrade_from_the_previous_release(
    temp_root: dict[str, Path],
    tmp_path: Path,
    cb_sim: CollegeBoardSimulator,
    pymap_server: PymapServer,
) -> None:
    """The previous release lands a file; the admin edits the unit and adds a drop-in;
    this checkout's `make install` keeps both (the edit reported, the new unit as .new),
    swaps the plain folder for a release; the new program does not fetch the first file
    again, lands a second, and `status --json` shows both. A second upgrade with the
    package index unreachable fails, and the installed program still lands a third."""
    install_previous_release(temp_root, tmp_path)
    prefix, unitdir = temp_root["PREFIX"], temp_root["UNITDIR"]
    assert prefix.is_dir() and not prefix.is_symlink()
    configure(temp_root, tmp_path, cb_sim, pymap_server)
    first, second = "4300_20261121_120000.csv", "4300_20261122_120000.csv"
    daemon = Started(*as_the_unit(temp_root))
    try:
        daemon.wait_event("daemon.ready")
        cb_sim.publish(first, b"first\r\n")
        pymap_server.deliver(mail.notification(first))
        daemon.wait_event("delivery.downloaded", filename=first)
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0
    asked = cb_sim.stats.file_url_names.count(first)  # the session's mailbox may hold older mail

    unit = unitdir / "scorefetch.service"
    edited = unit.read_text().replace("RestartSec=10s", "RestartSec=30s")
    unit.write_text(edited)
    override = unitdir / "scorefetch.service.d" / "override.conf"
    override.parent.mkdir()
    override.write_text("[Service]\nEnvironment=TZ=America/Chicago\n")

    upgraded = make_install(temp_root)
    assert upgraded.returncode == 0, upgraded.stdout[-3000:] + upgraded.stderr[-3000:]
    assert prefix.is_symlink() and prefix.resolve().parent.name == "scorefetch.releases"
    assert unit.read_text() == edited and f"kept your edited {unit}" in upgraded.stdout
    assert "RestartSec=10s" in (unitdir / "scorefetch.service.new").read_text()
    assert override.read_text() == "[Service]\nEnvironment=TZ=America/Chicago\n"
    assert (unitdir / "scorefetch.service.d" / "local.conf").exists()

    daemon = Started(*as_the_unit(temp_root))
    try:
        daemon.wait_event("daemon.ready")
        cb_sim.publish(second, b"second\r\n")
        pymap_server.deliver(mail.notification(first))  # a repeat of the old notification
        pymap_server.deliver(mail.notification(second))
        daemon.wait_event("delivery.downloaded", filename=second)
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0
    assert cb_sim.stats.file_url_names.count(first) == asked  # never asked for again

    program, config = prefix / "bin" / "scorefetch", temp_root["CONFDIR"] / "config.yaml"
    status = subprocess.run(
        [str(RUNUSER), "-u", USER, "--", str(program), "status", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    recent = {r["filename"]: r["state"] for r in json.loads(status.stdout)["recent"]}
    assert recent == {first: "downloaded", second: "downloaded"}

    release = prefix.resolve()
    nowhere = tmp_path / "no-wheels"
    nowhere.mkdir()
    offline = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(nowhere)}
    failed = make_install(temp_root, offline)
    assert failed.returncode != 0 and "is unchanged" in failed.stderr
    assert prefix.resolve() == release
    third = "4300_20261123_120000.csv"
    daemon = Started(*as_the_unit(temp_root))
    try:
        daemon.wait_event("daemon.ready")
        cb_sim.publish(third, b"third\r\n")
        pymap_server.deliver(mail.notification(third))
        daemon.wait_event("delivery.downloaded", filename=third)
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=60) == 0


def test_uninstall_stops_and_disables_every_instance(temp_root: dict[str, Path]) -> None:
    """`make uninstall` stops the plain unit and every `scorefetch@NAME` instance, disables
    each one systemd lists, and reloads: no instance is left running a deleted release.
    systemctl is a recorder here (systemd is not PID 1 in the test machine)."""
    record = temp_root["PREFIX"].parent.parent / "systemctl.log"
    fake = temp_root["PREFIX"].parent.parent / "systemctl"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {record}\n'
        'case "$1" in list-units) printf "scorefetch@east.service loaded active running x\\n'
        'scorefetch@west.service loaded failed failed y\\n";; esac\n'
    )
    fake.chmod(0o755)
    variables = [f"{k}={v}" for k, v in temp_root.items()] + [f"SYSTEMCTL={fake}"]
    done = subprocess.run(
        ["make", "--no-print-directory", "uninstall", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    calls = record.read_text().splitlines()
    assert "disable --now scorefetch.service" in calls
    assert "stop scorefetch@*.service" in calls
    assert "disable scorefetch@east.service scorefetch@west.service" in calls
    assert calls[-1] == "daemon-reload"
