"""A real Dovecot IMAP server, confined to one work folder, for the tests and benchmarks.

Config, sockets (base_dir), state, log and maildirs all live under the work folder;
/etc/dovecot and the system service are never read or touched. Plain IMAP on loopback;
with `tls` (sandbox/tls.py), STARTTLS on that port and implicit TLS on `tls_port` too.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from scorefetch.sandbox.imapserver import _ServerBase
from scorefetch.sandbox.ports import free_port, wait_for_port
from tests.standins.tls import LoopbackTls

_SYSTEM_BINARY = Path("/usr/sbin/dovecot")
# Services that chroot by default. chroot needs root, so a rootless instance turns it off.
_CHROOTING = ("aggregator", "anvil", "director", "imap-urlauth-login", "ipc", "old-stats")
# A unix socket path holds 107 bytes, and Dovecot puts names of up to ~25 under base_dir.
_MAX_BASE_DIR = 80


def dovecot_binary() -> str | None:
    """The dovecot executable, or None when Dovecot is not installed."""
    # /usr/sbin is often missing from a non-root PATH.
    found = shutil.which("dovecot")
    if found is None and _SYSTEM_BINARY.exists():
        found = str(_SYSTEM_BINARY)
    return found


class DovecotServer(_ServerBase):
    """Dovecot 2.3 with one passwd-file user and Maildir storage that survives stop()/start().

    With `introspection_url`, the user may also log in with XOAUTH2 or OAUTHBEARER: an oauth2
    passdb asks that URL (RFC 7662, token POSTed as a form) whether the token is active and
    whose it is (tests/standins/oauth.py answers it).
    """

    name = "dovecot"

    def __init__(
        self,
        workdir: Path,
        username: str = "scores@example.edu",
        password: str = "sandbox-imap",
        introspection_url: str | None = None,
        capability: str | None = None,
        tls: LoopbackTls | None = None,
    ) -> None:
        """`introspection_url` adds an oauth2 passdb that checks XOAUTH2 tokens there;
        `capability` replaces what Dovecot advertises, e.g. to hide IDLE; `tls` serves its
        certificate (STARTTLS on `port`, implicit TLS on `tls_port`)."""
        if ":" in username + password:  # the passwd-file separator
            raise ValueError("username and password must not contain ':'")
        self.workdir = workdir.absolute()
        self.username = username
        self.password = password
        self.introspection_url = introspection_url
        self.capability = capability
        self.tls = tls
        self.tls_port = 0
        self.log_path = self.workdir / "dovecot.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._base_dir = self.workdir / "run"
        if len(str(self._base_dir)) > _MAX_BASE_DIR:
            # Socket paths under a deep work folder would be too long for bind().
            self._base_dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
            weakref.finalize(self, shutil.rmtree, self._base_dir, ignore_errors=True)

    def start(self) -> None:
        """Start Dovecot in the foreground and wait for its IMAP port (the same one on restarts)."""
        if self._proc is not None:
            return
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError("dovecot is not installed (apt-get install dovecot-imapd)")
        if not self.port:
            self.port = free_port(self.host)
        if self.tls is not None and not self.tls_port:
            self.tls_port = free_port(self.host)
        conf = self._write_config()
        # A pid file left by a killed master blocks startup if another process got that pid.
        (self._base_dir / "master.pid").unlink(missing_ok=True)
        with self.log_path.open("ab") as log:  # early fatal errors go to stderr, not log_path
            self._proc = subprocess.Popen(
                [binary, "-F", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while self._proc.poll() is None and time.monotonic() < deadline:
            try:
                wait_for_port(self.host, self.port, timeout=0.2)
                return
            except TimeoutError:
                continue
        self.stop()
        raise RuntimeError(f"dovecot did not start on {self.host}:{self.port}:\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop Dovecot (SIGTERM, a second later SIGKILL); the maildir stays for the next
        start()."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()  # the master then stops its children and disconnects clients
        try:
            # It may then wait seconds for its log process (or an imap-login for the stats
            # process already gone); its mail is on disk by then, so it need not be waited for.
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the children too, so none keeps the port
            proc.wait()

    def _write_config(self) -> Path:
        mail = self.workdir / "mail"
        home = mail / self.username
        for folder in (self._base_dir, self.workdir / "state", home):
            folder.mkdir(parents=True, exist_ok=True)
        extra = login_chroot = ""
        if os.getuid() == 0:
            # Dovecot refuses root for login and mail processes, so they run as nobody. The
            # "/./" in home chroots the mail process into mail/, so nobody need not traverse
            # the 0700 folders above it (pytest's tmp_path is one).
            user = pwd.getpwnam("nobody")
            internal, home_field = "root", f"{mail}/./{self.username}"
            for folder in (mail, home):
                os.chown(folder, user.pw_uid, user.pw_gid)
        else:
            user = pwd.getpwuid(os.getuid())
            internal, home_field = user.pw_name, str(home)
            extra = "".join(f"service {name} {{\n  chroot =\n}}\n" for name in _CHROOTING)
            login_chroot = "  chroot =\n"
        users = self.workdir / "users"
        users.write_text(f"{self.username}:{{PLAIN}}{self.password}::::{home_field}::\n")
        users.chmod(0o600)
        mechanisms, oauth2_passdb = "plain login", ""
        if self.introspection_url is not None:
            oauth2 = self.workdir / "dovecot-oauth2.conf.ext"
            oauth2.write_text(f"""\
introspection_mode = post
introspection_url = {self.introspection_url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 5000
""")
            mechanisms += " xoauth2 oauthbearer"
            oauth2_passdb = f"""\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2}
}}
"""
        if self.capability is not None:
            extra += f"imap_capability = {self.capability}\n"
        ssl, imaps_port = "no", 0
        if self.tls is not None:
            ssl = f"yes\nssl_cert = <{self.tls.cert_file}\nssl_key = <{self.tls.key_file}"
            imaps_port = self.tls_port
        conf = self.workdir / "dovecot.conf"
        conf.write_text(f"""\
instance_name = dovecot-sandbox-{self.port}
base_dir = {self._base_dir}
state_dir = {self.workdir / "state"}
log_path = {self.log_path}
protocols = imap
listen = {self.host}
ssl = {ssl}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_username_format = %u
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name}
default_login_user = {user.pw_name}
mail_uid = {user.pw_uid}
mail_gid = {user.pw_gid}
first_valid_uid = {user.pw_uid}
first_valid_gid = {user.pw_gid}
valid_chroot_dirs = {mail}
mail_location = maildir:~/Maildir
# IDLE is pushed by inotify; this poll only matters if inotify instances run out.
mailbox_idle_check_interval = 1 secs
# The imap processes' titles name the command running ("[user ip IDLE]"): see idling().
verbose_proctitle = yes
# A refused login is answered at once, not after 2 s: the tests wait for events, not Dovecot.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {users}
}}
{oauth2_passdb}userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
service imap-login {{
{login_chroot}  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {imaps_port}
  }}
}}
{extra}""")
        return conf

    def idling(self) -> bool:
        """Whether a session of this instance is waiting in IDLE (its imap process's title
        says so), for a test that must deliver mail while the client idles, TLS or not."""
        prefix = f"dovecot-sandbox-{self.port}/imap [".encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                title = cmdline.read_bytes().rstrip(b"\0")
            except OSError:
                continue  # the process is gone
            if title.startswith(prefix) and title.endswith(b" IDLE]"):
                return True
        return False

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no dovecot log)"
        return "\n".join(text.splitlines()[-lines:])
