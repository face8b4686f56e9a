"""A real OpenSSH server (Debian's `openssh-server`), confined to one work folder: the SFTP
destination of `scorefetch demo`, the forwarding tests and the benchmarks.

Its own ed25519 host key, one authorized client key for the user running it, the
`internal-sftp` subsystem, on a free loopback port. /etc/ssh and the system service are
never read or touched (as root, sshd insists on its privilege-separation folder
/run/sshd, which is created when missing, as Debian's own unit does).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scorefetch.sandbox.ports import Lifecycle, free_port, wait_for_port

_SYSTEM_BINARY = Path("/usr/sbin/sshd")
_PRIVSEP_DIR = Path("/run/sshd")


def sshd_binary() -> str | None:
    """The absolute path of sshd (it re-executes itself, so a relative one will not do),
    or None when OpenSSH's server is not installed."""
    found = shutil.which("sshd") or (str(_SYSTEM_BINARY) if _SYSTEM_BINARY.exists() else None)
    return str(Path(found).absolute()) if found else None


def new_ed25519_key() -> tuple[str, str]:
    """A fresh ed25519 key: (private key in OpenSSH PEM form, public key line)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


def fingerprint(public_line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line (`ssh-ed25519 AAAA…`)."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class SshServer(Lifecycle):
    """`sshd -D -e` on 127.0.0.1:`port`; files land wherever a client puts them (use
    folders under `root`). `client_key` logs in as `username`."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, sftp_subsystem: str = "internal-sftp") -> None:
        self.workdir = workdir.absolute()
        self.sftp_subsystem = sftp_subsystem  # another command makes a server that hangs
        self.root = self.workdir / "sftp"  # where tests point remote_dir
        self.username = getpass.getuser()
        self.port = 0
        self.log_path = self.workdir / "sshd.log"
        self.host_key_private, self.host_key = new_ed25519_key()
        self.client_key, self.client_public_key = new_ed25519_key()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host_key_fingerprint(self) -> str:
        return fingerprint(self.host_key)

    def start(self) -> None:
        binary = sshd_binary()
        if binary is None:
            raise RuntimeError("sshd is not installed (apt-get install openssh-server)")
        self.root.mkdir(parents=True, exist_ok=True)
        etc = self.workdir / "etc"
        etc.mkdir(mode=0o700, exist_ok=True)
        host_key = etc / "host_ed25519"
        host_key.write_text(self.host_key_private)
        host_key.chmod(0o600)
        authorized = etc / "authorized_keys"
        authorized.write_text(self.client_public_key + "\n")
        authorized.chmod(0o600)
        if os.geteuid() == 0 and not _PRIVSEP_DIR.exists():
            _PRIVSEP_DIR.mkdir(mode=0o755)
        self.port = self.port or free_port(self.host)
        config = etc / "sshd_config"
        config.write_text(
            f"""\
ListenAddress {self.host}:{self.port}
HostKey {host_key}
PidFile {self.workdir / "sshd.pid"}
AuthorizedKeysFile {authorized}
AllowUsers {self.username}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
AllowTcpForwarding no
X11Forwarding no
MaxStartups 100:30:200
MaxSessions 50
LogLevel VERBOSE
Subsystem sftp {self.sftp_subsystem}
"""
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            wait_for_port(self.host, self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"sshd did not start: {self.log_tail()}") from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # The listener and every session (its own process group) end together.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def forward_config(
    server: SshServer,
    folder: Path,
    *,
    name: str = "slate",
    remote_dir: str = "incoming/{vendor}",
    vendors: tuple[str, ...] = (),  # none: every vendor there is
    retry_schedule: tuple[str, ...] = ("2s", "5s"),
    port: int | None = None,
    host_key: str | None = None,
    timeout: str = "10s",
) -> str:
    """A `forward:` block for a sandbox config in `folder` (its client key beside the other
    secrets in folder/credentials). A relative `remote_dir` lands under `server.root`;
    `port` sends the daemon elsewhere (a FaultProxy before the server)."""
    secrets = folder / "credentials"
    secrets.mkdir(mode=0o700, exist_ok=True)
    key = secrets / f"{name}_ed25519"
    key.write_text(server.client_key)
    key.chmod(0o600)
    if not remote_dir.startswith("/"):
        remote_dir = f"{server.root}/{remote_dir}"
    listed = f"    vendors: [{', '.join(vendors)}]\n" if vendors else ""
    return f"""\
forward:
  {name}:
    type: sftp
    host: {server.host}
    port: {port or server.port}
    username: "{server.username}"
    private_key_file: credentials/{name}_ed25519
    host_key: "{host_key or server.host_key}"
    remote_dir: "{remote_dir}"
{listed}    retry_schedule: [{", ".join(retry_schedule)}]
    timeout: {timeout}
"""
