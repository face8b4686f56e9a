"""The YAML configuration: loading, ${VAR} and x_file secrets, validation, error messages.

Every test writes a real YAML file into tmp_path and calls `sources.load(path, environ=...)`
(or `scorefetch.cli.main` in-process for the `check-config` behaviour), so nothing here
depends on the caller's environment or on /etc.
"""

from __future__ import annotations

import copy
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from scorefetch import config, sources
from scorefetch.cli import main
from scorefetch.core.errors import ConfigError

MASK = "********"
IMAP_SECRET = "s3cr3t-imap-VALUE"
CB_SECRET = "s3cr3t-collegeboard-VALUE"
ENCOURA_KEY = "s3cr3t-encoura-KEY"
ENCOURA_SECRET = "s3cr3t-encoura-VALUE"

# The example from the spec's "Configuration (YAML)" section, verbatim.
SPEC_EXAMPLE = """\
download_dir: /var/lib/scorefetch/files   # files land in <download_dir>/<vendor>/...
state_dir: /var/lib/scorefetch/state      # ledger: <state_dir>/ledger.sqlite3

log:
  format: json          # json | console (default: console on a TTY, json otherwise)
  level: info

imap:
  host: imap.example.edu
  port: 993
  security: tls         # tls | starttls | plain   (plain: only for loopback hosts)
  username: scores@example.edu
  password: ${IMAP_PASSWORD}
  folder: INBOX
  lookback_days: 14     # on a first start, also handle notifications already in the folder this recent
  # auth: {method: xoauth2, provider: microsoft, tenant_id: ..., client_id: ..., client_secret_file: ...}

collegeboard:
  enabled: true
  base_url: https://scoresdownload.collegeboard.org
  username: scores@example.edu
  password_file: collegeboard_password      # relative: resolved in $CREDENTIALS_DIRECTORY
  formats: [csv]        # any of csv, txt, zip; notifications for other formats are skipped
  senders: ["@collegeboard.org"]            # From allowlist: full addresses or @domains
  download_hosts: ["s3.amazonaws.com", "*.s3.amazonaws.com"]
  poll_interval: 1h     # reconciliation through the listing endpoint; 0 disables

encoura:
  enabled: false
  base_url: https://api.datalab.nrccua.org/v1
  api_key_file: encoura_api_key
  username: service-account@example.edu
  password_file: encoura_password
  organization: null    # organization uid; default: the account's only organization
  product_keys: [score-reporter]
  poll_interval: 15m
  download_hosts: ["s3.amazonaws.com", "*.s3.amazonaws.com"]
"""  # noqa: E501 - copied verbatim from the spec

DELETE = object()  # marks a key to remove in a patch


# ---------------------------------------------------------------- helpers


def minimal() -> dict[str, Any]:
    """The smallest valid configuration, as plain data (a fresh copy each call)."""
    return {
        "download_dir": "/srv/scorefetch/files",
        "state_dir": "/srv/scorefetch/state",
        "imap": {
            "host": "127.0.0.1",
            "security": "plain",
            "username": "scores@example.edu",
            "password": "imap-pw",
        },
        "collegeboard": {"username": "cb-user", "password": "cb-pw"},
    }


def patched(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `data` with dotted keys set (or removed with DELETE)."""
    out = copy.deepcopy(data)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def write_yaml(folder: Path, data: Any, name: str = "config.yaml") -> Path:
    """Dump `data` as a real YAML file and return its path."""
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_text(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    """The ConfigError message `load` raises; every message starts with the file path."""
    with pytest.raises(ConfigError) as excinfo:
        sources.load(path, environ={} if environ is None else environ)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------- loading and defaults


def test_minimal_config_loads_with_documented_defaults(tmp_path: Path) -> None:
    """A minimal config loads; every key it leaves out takes its documented default."""
    loaded = sources.load(write_yaml(tmp_path, minimal()), environ={})

    assert loaded.download_dir == Path("/srv/scorefetch/files")
    assert loaded.state_dir == Path("/srv/scorefetch/state")
    assert loaded.ledger_path == Path("/srv/scorefetch/state/ledger.sqlite3")
    assert loaded.log.format is None
    assert loaded.log.level == "info"
    assert loaded.encoura is None

    imap = loaded.imap
    assert imap is not None
    assert imap.host == "127.0.0.1"
    assert imap.port == 993
    assert imap.security == "plain"
    assert imap.username == "scores@example.edu"
    assert imap.password.get_secret_value() == "imap-pw"
    assert imap.folder == "INBOX"
    assert imap.lookback_days == 14
    assert imap.idle_timeout == 300.0
    assert imap.poll_interval == 60.0
    assert imap.connect_timeout == 15.0
    assert imap.read_timeout == 60.0

    cb = loaded.collegeboard
    assert cb is not None
    assert cb.enabled is True
    assert cb.base_url == "https://scoresdownload.collegeboard.org"
    assert cb.username == "cb-user"
    assert cb.password.get_secret_value() == "cb-pw"
    assert cb.formats == ("csv",)
    assert cb.senders == ("@collegeboard.org",)
    assert cb.download_hosts[:2] == ("s3.amazonaws.com", "*.s3.amazonaws.com")
    assert "*.s3.*.amazonaws.com" in cb.download_hosts  # regional endpoints too
    assert cb.max_file_size == 2 * 1024**3
    assert cb.poll_interval == 3600.0
    assert cb.max_parallel == 4
    assert cb.retry_schedule == (30.0, 120.0, 600.0, 3600.0)
    assert cb.download_timeout == 3600.0


def test_secrets_do_not_show_in_repr(tmp_path: Path) -> None:
    """A loaded config's repr (what a stray log line would print) hides every password."""
    loaded = sources.load(write_yaml(tmp_path, minimal()), environ={})
    assert "imap-pw" not in repr(loaded)
    assert "cb-pw" not in repr(loaded)


@pytest.mark.parametrize(
    ("target", "attribute", "value"),
    [
        pytest.param(lambda c: c, "download_dir", Path("/elsewhere"), id="top-download_dir"),
        pytest.param(lambda c: c.log, "level", "debug", id="log-level"),
        pytest.param(lambda c: c.imap, "port", 143, id="imap-port"),
        pytest.param(lambda c: c.imap, "host", "imap.example.edu", id="imap-host"),
        pytest.param(lambda c: c.collegeboard, "formats", ("txt",), id="collegeboard-formats"),
        pytest.param(lambda c: c.collegeboard, "poll_interval", 1.0, id="collegeboard-poll"),
    ],
)
def test_loaded_config_is_frozen(
    tmp_path: Path, target: Callable[[Any], Any], attribute: str, value: Any
) -> None:
    """Assigning any attribute of a loaded config raises; the value stays as loaded."""
    loaded = sources.load(write_yaml(tmp_path, minimal()), environ={})
    obj = target(loaded)
    before = getattr(obj, attribute)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(obj, attribute, value)
    assert getattr(obj, attribute) == before


def test_list_values_are_immutable_tuples(tmp_path: Path) -> None:
    """YAML lists load as tuples, so nothing can append to them after validation."""
    data = patched(minimal(), {"collegeboard.formats": ["csv", "txt"]})
    cb = sources.load(write_yaml(tmp_path, data), environ={}).collegeboard
    assert cb is not None
    assert isinstance(cb.formats, tuple)
    assert isinstance(cb.senders, tuple)
    assert isinstance(cb.download_hosts, tuple)
    assert isinstance(cb.retry_schedule, tuple)


def test_spec_example_loads(tmp_path: Path) -> None:
    """The full example of the spec's Configuration section loads, secrets from env and files."""
    path = write_text(tmp_path, SPEC_EXAMPLE)
    (tmp_path / "collegeboard_password").write_text(CB_SECRET + "\n")
    (tmp_path / "encoura_api_key").write_text(ENCOURA_KEY + "\n")
    (tmp_path / "encoura_password").write_text(ENCOURA_SECRET + "\n")

    loaded = sources.load(path, environ={"IMAP_PASSWORD": IMAP_SECRET})

    assert loaded.download_dir == Path("/var/lib/scorefetch/files")
    assert loaded.ledger_path == Path("/var/lib/scorefetch/state/ledger.sqlite3")
    assert (loaded.log.format, loaded.log.level) == ("json", "info")
    imap = loaded.imap
    assert imap is not None
    assert (imap.host, imap.port, imap.security) == ("imap.example.edu", 993, "tls")
    assert imap.password.get_secret_value() == IMAP_SECRET
    assert (imap.folder, imap.lookback_days) == ("INBOX", 14)
    cb = loaded.collegeboard
    assert cb is not None
    assert cb.enabled is True
    assert cb.base_url == "https://scoresdownload.collegeboard.org"
    assert cb.password.get_secret_value() == CB_SECRET
    assert cb.formats == ("csv",)
    assert cb.senders == ("@collegeboard.org",)
    assert cb.download_hosts == ("s3.amazonaws.com", "*.s3.amazonaws.com")
    assert cb.poll_interval == 3600.0
    enc = loaded.encoura
    assert enc is not None
    assert enc.enabled is False
    assert enc.base_url == "https://api.datalab.nrccua.org/v1"
    assert enc.api_key is not None and enc.api_key.get_secret_value() == ENCOURA_KEY
    assert enc.password is not None and enc.password.get_secret_value() == ENCOURA_SECRET
    assert enc.username == "service-account@example.edu"
    assert enc.organization is None
    assert enc.product_keys == ("score-reporter",)
    assert enc.poll_interval == 900.0


def test_collegeboard_disabled_needs_no_imap(tmp_path: Path) -> None:
    """With collegeboard disabled, the imap section may be left out."""
    data = patched(minimal(), {"imap": DELETE, "collegeboard.enabled": False})
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert loaded.imap is None
    assert loaded.collegeboard is not None and loaded.collegeboard.enabled is False


def test_disabled_vendor_needs_no_credentials(tmp_path: Path) -> None:
    """`collegeboard: {enabled: false}` loads without username or password, and a disabled
    section's secret files are not even read (the credential need not exist)."""
    data = {"download_dir": "/srv/f", "state_dir": "/srv/s", "collegeboard": {"enabled": False}}
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert loaded.collegeboard is not None and loaded.collegeboard.password is None
    data["encoura"] = {"enabled": False, "api_key_file": "missing", "password_file": "missing"}
    data["collegeboard"] = {"enabled": False, "password_file": "missing"}
    assert sources.load(write_yaml(tmp_path, data), environ={}).encoura is not None


def test_enabled_collegeboard_still_needs_credentials(tmp_path: Path) -> None:
    """An enabled College Board section without a password names the key."""
    data = patched(minimal(), {"collegeboard.password": DELETE})
    message = load_error(write_yaml(tmp_path, data))
    assert "collegeboard.password: required key is missing" in message


def test_hooks_need_absolute_programs(tmp_path: Path) -> None:
    """A hook's program is an absolute path (no shell, no PATH lookup); timeout is a duration."""
    data = patched(minimal(), {"hooks.on_failure": ["mail-office", "it@example.edu"]})
    assert "hooks.on_failure: 'mail-office': give the program's absolute path" in load_error(
        write_yaml(tmp_path, data)
    )
    data = patched(minimal(), {"hooks.on_delivery": ["/usr/local/bin/x"], "hooks.timeout": "1m"})
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert loaded.hooks.on_delivery == ("/usr/local/bin/x",) and loaded.hooks.timeout == 60


def test_directories_only_config_loads(tmp_path: Path) -> None:
    """download_dir and state_dir alone are a valid (if idle) configuration."""
    data = {"download_dir": "/srv/f", "state_dir": "/srv/s"}
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert (loaded.imap, loaded.collegeboard, loaded.encoura) == (None, None, None)


# ---------------------------------------------------------------- ${VAR} expansion


def test_variables_expand_anywhere_in_any_string(tmp_path: Path) -> None:
    """${VAR} expands in any string: whole value, inside text, in lists, several per string."""
    path = write_text(
        tmp_path,
        """\
        download_dir: ${BASE}/files
        state_dir: "${BASE}/state"
        imap:
          host: ${HOST}
          port: "${PORT}"
          security: plain
          username: scores@${DOMAIN}
          password: ${PW_A}-${PW_B}
          folder: Score Reports/${YEAR}
        collegeboard:
          username: cb-${DOMAIN}
          password: literal $NOT_A_VAR and $ sign
          senders: ["@${DOMAIN}", "notify@collegeboard.org"]
        """,
    )
    environ = {
        "BASE": "/srv/sf",
        "HOST": "localhost",
        "PORT": "1143",
        "DOMAIN": "example.edu",
        "PW_A": "left",
        "PW_B": "right",
        "YEAR": "2026",
    }
    loaded = sources.load(path, environ=environ)
    assert loaded.download_dir == Path("/srv/sf/files")
    assert loaded.state_dir == Path("/srv/sf/state")
    assert loaded.imap is not None
    assert loaded.imap.host == "localhost"
    assert loaded.imap.port == 1143
    assert loaded.imap.username == "scores@example.edu"
    assert loaded.imap.password.get_secret_value() == "left-right"
    assert loaded.imap.folder == "Score Reports/2026"
    assert loaded.collegeboard is not None
    assert loaded.collegeboard.username == "cb-example.edu"
    assert loaded.collegeboard.password.get_secret_value() == "literal $NOT_A_VAR and $ sign"
    assert loaded.collegeboard.senders == ("@example.edu", "notify@collegeboard.org")


def test_environ_argument_is_used_not_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`load(..., environ=...)` expands from that mapping only, not from os.environ."""
    monkeypatch.setenv("ONLY_IN_PROCESS", "x")
    data = patched(minimal(), {"imap.password": "${ONLY_IN_PROCESS}"})
    message = load_error(write_yaml(tmp_path, data), environ={})
    assert "ONLY_IN_PROCESS" in message


@pytest.mark.parametrize(
    ("changes", "key_path", "variable"),
    [
        pytest.param(
            {"download_dir": "${NOPE_DIR}/files"}, "download_dir", "NOPE_DIR", id="top-level"
        ),
        pytest.param({"imap.password": "${NOPE_PW}"}, "imap.password", "NOPE_PW", id="nested"),
        pytest.param(
            {"imap.username": "scores@${NOPE_DOMAIN}.edu"},
            "imap.username",
            "NOPE_DOMAIN",
            id="inside-text",
        ),
        pytest.param(
            {"collegeboard.senders": ["@collegeboard.org", "@${NOPE_SENDER}"]},
            "collegeboard.senders[1]",
            "NOPE_SENDER",
            id="list-item",
        ),
        pytest.param(
            {"collegeboard.password": DELETE, "collegeboard.password_file": "${NOPE_FILE}"},
            "collegeboard.password_file",
            "NOPE_FILE",
            id="secret-file-path",
        ),
    ],
)
def test_missing_variable_names_file_key_path_and_variable(
    tmp_path: Path, changes: dict[str, Any], key_path: str, variable: str
) -> None:
    """An unset ${VAR} is a ConfigError naming the file, the key path and the variable."""
    path = write_yaml(tmp_path, patched(minimal(), changes))
    message = load_error(path, environ={"HOME": "/"})
    assert f"{path}: {key_path}: environment variable {variable} is not set" in message


def test_variable_values_do_not_leak_into_errors(tmp_path: Path) -> None:
    """A secret expanded into a wrongly typed key is not echoed in the error message."""
    data = patched(minimal(), {"imap.port": "${IMAP_PASSWORD}"})
    message = load_error(write_yaml(tmp_path, data), environ={"IMAP_PASSWORD": IMAP_SECRET})
    assert "imap.port" in message
    assert IMAP_SECRET not in message


# ---------------------------------------------------------------- x_file secrets


def _with_cb_password_file(value: str) -> dict[str, Any]:
    return patched(
        minimal(), {"collegeboard.password": DELETE, "collegeboard.password_file": value}
    )


def _cb_password(path: Path, environ: dict[str, str]) -> str:
    cb = sources.load(path, environ=environ).collegeboard
    assert cb is not None
    return cb.password.get_secret_value()


def test_relative_secret_file_resolves_in_credentials_directory(tmp_path: Path) -> None:
    """With $CREDENTIALS_DIRECTORY set, a relative x_file is read there, not beside the config."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "cb_password").write_text("from-credentials-dir\n")
    (tmp_path / "cb_password").write_text("from-config-folder\n")
    path = write_yaml(tmp_path, _with_cb_password_file("cb_password"))
    assert _cb_password(path, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-credentials-dir"


def test_relative_secret_file_resolves_beside_config_without_credentials_directory(
    tmp_path: Path,
) -> None:
    """Without $CREDENTIALS_DIRECTORY, a relative x_file is read from the config file's folder."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "secrets").mkdir()
    (etc / "secrets" / "cb_password").write_text("beside-config\n")
    path = write_yaml(etc, _with_cb_password_file("secrets/cb_password"))
    assert _cb_password(path, {}) == "beside-config"


def test_empty_credentials_directory_counts_as_unset(tmp_path: Path) -> None:
    """An empty $CREDENTIALS_DIRECTORY falls back to the config file's folder."""
    (tmp_path / "cb_password").write_text("beside-config\n")
    path = write_yaml(tmp_path, _with_cb_password_file("cb_password"))
    assert _cb_password(path, {"CREDENTIALS_DIRECTORY": ""}) == "beside-config"


def test_absolute_secret_file_ignores_credentials_directory(tmp_path: Path) -> None:
    """An absolute x_file path is read as is, even when $CREDENTIALS_DIRECTORY is set."""
    secret = tmp_path / "elsewhere" / "cb_password"
    secret.parent.mkdir()
    secret.write_text("absolute\n")
    creds = tmp_path / "credentials"
    creds.mkdir()
    path = write_yaml(tmp_path, _with_cb_password_file(str(secret)))
    assert _cb_password(path, {"CREDENTIALS_DIRECTORY": str(creds)}) == "absolute"
    assert _cb_password(path, {}) == "absolute"


def test_secret_file_path_may_use_variables(tmp_path: Path) -> None:
    """The x_file path itself is ${VAR}-expanded before it is read."""
    (tmp_path / "cb_password").write_text("via-variable\n")
    path = write_yaml(tmp_path, _with_cb_password_file("${SECRETS}/cb_password"))
    assert _cb_password(path, {"SECRETS": str(tmp_path)}) == "via-variable"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("pw\n", "pw", id="lf"),
        pytest.param("pw\r\n", "pw", id="crlf"),
        pytest.param("pw", "pw", id="no-newline"),
        pytest.param("pw\n\n", "pw", id="blank-lines"),
        pytest.param("  pw with spaces  \n", "  pw with spaces  ", id="inner-spaces-kept"),
    ],
)
def test_secret_file_trailing_newline_is_stripped(
    tmp_path: Path, content: str, expected: str
) -> None:
    """A secret file's trailing newline is stripped; the secret itself is kept verbatim."""
    (tmp_path / "cb_password").write_bytes(content.encode())
    path = write_yaml(tmp_path, _with_cb_password_file("cb_password"))
    assert _cb_password(path, {}) == expected


def test_every_secret_accepts_a_file(tmp_path: Path) -> None:
    """imap.password, collegeboard.password, encoura.api_key and encoura.password take x_file."""
    for name, value in [
        ("imap_pw", IMAP_SECRET),
        ("cb_pw", CB_SECRET),
        ("enc_key", ENCOURA_KEY),
        ("enc_pw", ENCOURA_SECRET),
    ]:
        (tmp_path / name).write_text(value + "\n")
    data = patched(
        minimal(),
        {
            "imap.password": DELETE,
            "imap.password_file": "imap_pw",
            "collegeboard.password": DELETE,
            "collegeboard.password_file": "cb_pw",
            "encoura": {"api_key_file": "enc_key", "password_file": "enc_pw"},
        },
    )
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert loaded.imap is not None and loaded.imap.password.get_secret_value() == IMAP_SECRET
    assert loaded.collegeboard is not None
    assert loaded.collegeboard.password.get_secret_value() == CB_SECRET
    assert loaded.encoura is not None
    assert loaded.encoura.api_key is not None
    assert loaded.encoura.api_key.get_secret_value() == ENCOURA_KEY
    assert loaded.encoura.password is not None
    assert loaded.encoura.password.get_secret_value() == ENCOURA_SECRET


@pytest.mark.parametrize(
    ("section", "file_content", "both", "fragment"),
    [
        pytest.param("imap", None, False, "cannot read", id="imap-missing"),
        pytest.param("collegeboard", None, False, "cannot read", id="cb-missing"),
        pytest.param("collegeboard", "", False, "is empty", id="cb-empty"),
        pytest.param("collegeboard", "\n", False, "is empty", id="cb-only-newline"),
        pytest.param("imap", "pw\n", True, "not both", id="imap-both"),
        pytest.param("collegeboard", "pw\n", True, "not both", id="cb-both"),
    ],
)
def test_secret_file_problems_name_the_key_path(
    tmp_path: Path, section: str, file_content: str | None, both: bool, fragment: str
) -> None:
    """A missing or empty x_file, or both x and x_file, is a ConfigError naming the key path."""
    if file_content is not None:
        (tmp_path / "pw_file").write_text(file_content)
    changes: dict[str, Any] = {f"{section}.password_file": "pw_file"}
    if not both:
        changes[f"{section}.password"] = DELETE
    message = load_error(write_yaml(tmp_path, patched(minimal(), changes)))
    assert f"{section}.password_file: " in message
    assert fragment in message
    if file_content is None:
        assert str(tmp_path / "pw_file") in message  # says which file it tried


@pytest.mark.parametrize(
    "value",
    [pytest.param("", id="empty-string"), pytest.param(42, id="number")],
)
def test_secret_file_value_must_be_a_path(tmp_path: Path, value: Any) -> None:
    """An x_file that is not a non-empty string is refused, naming the key path."""
    data = patched(minimal(), {"imap.password": DELETE, "imap.password_file": value})
    message = load_error(write_yaml(tmp_path, data))
    assert "imap.password_file: must be a file path" in message


def test_secret_file_is_a_directory(tmp_path: Path) -> None:
    """An x_file that names a directory is a ConfigError naming the key path."""
    (tmp_path / "pw_dir").mkdir()
    message = load_error(write_yaml(tmp_path, _with_cb_password_file("pw_dir")))
    assert "collegeboard.password_file: cannot read" in message


def test_secret_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A secret file that is not UTF-8 text is a ConfigError naming the key path."""
    (tmp_path / "cb_password").write_bytes(b"\xff\xfe\x00binary")
    message = load_error(write_yaml(tmp_path, _with_cb_password_file("cb_password")))
    assert "collegeboard.password_file" in message


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("30s", 30.0, id="30s"),
        pytest.param("15m", 900.0, id="15m"),
        pytest.param("1h", 3600.0, id="1h"),
        pytest.param("2d", 172800.0, id="2d"),
        pytest.param("1.5h", 5400.0, id="1.5h"),
        pytest.param("500ms", 0.5, id="500ms"),
        pytest.param(90, 90.0, id="int-90"),
        pytest.param(1.5, 1.5, id="float-1.5"),
        pytest.param("90", 90.0, id="string-90"),
        pytest.param(0, 0.0, id="zero-disables"),
    ],
)
def test_duration_values_in_config(tmp_path: Path, value: Any, seconds: float) -> None:
    """collegeboard.poll_interval accepts 30s/15m/1h/2d forms and plain seconds."""
    data = patched(minimal(), {"collegeboard.poll_interval": value})
    cb = sources.load(write_yaml(tmp_path, data), environ={}).collegeboard
    assert cb is not None
    assert cb.poll_interval == seconds


@pytest.mark.parametrize(
    ("changes", "key_path"),
    [
        pytest.param(
            {"collegeboard.poll_interval": "soon"}, "collegeboard.poll_interval", id="soon"
        ),
        pytest.param({"collegeboard.poll_interval": -5}, "collegeboard.poll_interval", id="int-5"),
        pytest.param(
            {"collegeboard.poll_interval": "-5"}, "collegeboard.poll_interval", id="str-5"
        ),
        pytest.param({"collegeboard.poll_interval": "10x"}, "collegeboard.poll_interval", id="10x"),
        pytest.param({"collegeboard.poll_interval": True}, "collegeboard.poll_interval", id="bool"),
        pytest.param({"imap.idle_timeout": "later"}, "imap.idle_timeout", id="imap-idle"),
        pytest.param(
            {"collegeboard.retry_schedule": ["30s", "soon"]},
            "collegeboard.retry_schedule[1]",
            id="list-item",
        ),
        pytest.param(
            {"encoura": {"poll_interval": "1w"}}, "encoura.poll_interval", id="encoura-1w"
        ),
    ],
)
def test_bad_durations_are_refused_with_key_path(
    tmp_path: Path, changes: dict[str, Any], key_path: str
) -> None:
    """A value that is not a non-negative duration is refused; the message names the key path."""
    message = load_error(write_yaml(tmp_path, patched(minimal(), changes)))
    assert f"{key_path}: " in message
    assert "duration" in message


@pytest.mark.parametrize(
    "value",
    [pytest.param(".nan", id="nan"), pytest.param(".inf", id="inf")],
)
def test_non_finite_durations_are_refused(tmp_path: Path, value: str) -> None:
    """poll_interval: .nan / .inf is refused rather than loaded as a non-finite float."""
    path = write_text(
        tmp_path,
        yaml.safe_dump(minimal(), sort_keys=False).replace(
            "collegeboard:\n", f"collegeboard:\n  poll_interval: {value}\n"
        ),
    )
    message = load_error(path)
    assert "collegeboard.poll_interval" in message


@pytest.mark.parametrize(
    ("changes", "key_path"),
    [
        pytest.param({"imap.idle_timeout": "30m"}, "imap.idle_timeout", id="idle-over-29m"),
        pytest.param({"imap.idle_timeout": 0}, "imap.idle_timeout", id="idle-zero"),
        pytest.param({"imap.poll_interval": 0}, "imap.poll_interval", id="poll-zero"),
        pytest.param({"imap.poll_interval": "1h"}, "imap.poll_interval", id="poll-over-29m"),
        pytest.param({"imap.connect_timeout": "0s"}, "imap.connect_timeout", id="connect-zero"),
        pytest.param(
            {"collegeboard.download_timeout": 0}, "collegeboard.download_timeout", id="download-0"
        ),
    ],
)
def test_duration_bounds(tmp_path: Path, changes: dict[str, Any], key_path: str) -> None:
    """Timeouts must be positive, and IMAP IDLE is re-issued within the 29-minute RFC limit."""
    message = load_error(write_yaml(tmp_path, patched(minimal(), changes)))
    assert f"{key_path}: " in message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("30s", 30.0, id="30s"),
        pytest.param("15m", 900.0, id="15m"),
        pytest.param("1h", 3600.0, id="1h"),
        pytest.param("2d", 172800.0, id="2d"),
        pytest.param("250ms", 0.25, id="250ms"),
        pytest.param(" 5 m ", 300.0, id="spaces"),
        pytest.param("90", 90.0, id="str-90"),
        pytest.param(90, 90.0, id="int-90"),
        pytest.param(1.5, 1.5, id="float-1.5"),
        pytest.param("0", 0.0, id="zero"),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    """parse_duration turns unit-suffixed strings and plain numbers into seconds."""
    assert config.parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("soon", id="word"),
        pytest.param("-5", id="negative-str"),
        pytest.param(-5, id="negative-int"),
        pytest.param(-0.5, id="negative-float"),
        pytest.param("10x", id="unknown-unit"),
        pytest.param("1h30m", id="compound"),
        pytest.param("", id="empty"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="none"),
    ],
)
def test_parse_duration_refusals(value: object) -> None:
    """parse_duration raises ValueError for anything that is not a non-negative duration."""
    with pytest.raises(ValueError, match="duration"):
        config.parse_duration(value)


# ---------------------------------------------------------------- loopback rules


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("127.0.0.1", True, id="127.0.0.1"),
        pytest.param("127.5.5.5", True, id="127.5.5.5"),
        pytest.param("localhost", True, id="localhost"),
        pytest.param("LOCALHOST", True, id="LOCALHOST"),
        pytest.param("localhost.localdomain", True, id="localhost.localdomain"),
        pytest.param("::1", True, id="ipv6-loopback"),
        pytest.param("[::1]", True, id="ipv6-bracketed"),
        pytest.param("imap.example.edu", False, id="hostname"),
        pytest.param("localhost.example.edu", False, id="localhost-prefix"),
        pytest.param("127.0.0.1.example.edu", False, id="loopback-lookalike"),
        pytest.param("10.0.0.1", False, id="private"),
        pytest.param("0.0.0.0", False, id="unspecified-v4"),  # noqa: S104
        pytest.param("::", False, id="unspecified-v6"),
        pytest.param("128.0.0.1", False, id="128.0.0.1"),
        pytest.param("", False, id="empty"),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    """is_loopback is true only for localhost, 127.0.0.0/8 and ::1."""
    assert config.is_loopback(host) is expected


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("127.0.0.1", id="127.0.0.1"),
        pytest.param("127.5.5.5", id="127.5.5.5"),
        pytest.param("localhost", id="localhost"),
        pytest.param("::1", id="ipv6"),
    ],
)
def test_plain_imap_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    """security: plain is accepted for loopback IMAP hosts."""
    data = patched(minimal(), {"imap.host": host, "imap.port": 1143})
    imap = sources.load(write_yaml(tmp_path, data), environ={}).imap
    assert imap is not None
    assert (imap.host, imap.security, imap.port) == (host, "plain", 1143)


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("imap.example.edu", id="hostname"),
        pytest.param("10.0.0.5", id="private-ip"),
        pytest.param("0.0.0.0", id="unspecified"),  # noqa: S104
    ],
)
def test_plain_imap_refused_off_loopback(tmp_path: Path, host: str) -> None:
    """security: plain off loopback is refused, and the message says why and what to use."""
    message = load_error(write_yaml(tmp_path, patched(minimal(), {"imap.host": host})))
    assert "imap.security: plain" in message
    assert "clear text" in message
    assert "loopback" in message
    assert repr(host) in message
    assert "tls or starttls" in message


@pytest.mark.parametrize(
    "security", [pytest.param("tls", id="tls"), pytest.param("starttls", id="starttls")]
)
def test_encrypted_imap_allowed_anywhere(tmp_path: Path, security: str) -> None:
    """tls and starttls are accepted for any host."""
    data = patched(minimal(), {"imap.host": "imap.example.edu", "imap.security": security})
    imap = sources.load(write_yaml(tmp_path, data), environ={}).imap
    assert imap is not None and imap.security == security


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://127.0.0.1:8080", "http://127.0.0.1:8080", id="http-127"),
        pytest.param("http://localhost:8080/cb/", "http://localhost:8080/cb", id="http-localhost"),
        pytest.param("http://[::1]:8080", "http://[::1]:8080", id="http-ipv6"),
        pytest.param(
            "https://scores.example.org/api", "https://scores.example.org/api", id="https-remote"
        ),
        pytest.param("https://127.0.0.1:8443/", "https://127.0.0.1:8443", id="https-loopback"),
    ],
)
def test_base_url_accepted(tmp_path: Path, url: str, expected: str) -> None:
    """base_url may be https anywhere and http only on loopback; a trailing slash is dropped."""
    data = patched(minimal(), {"collegeboard.base_url": url, "encoura": {"base_url": url}})
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert loaded.collegeboard is not None and loaded.collegeboard.base_url == expected
    assert loaded.encoura is not None and loaded.encoura.base_url == expected


@pytest.mark.parametrize(
    ("section", "url", "fragment"),
    [
        pytest.param(
            "collegeboard", "http://scores.example.org", "only for loopback", id="cb-http-remote"
        ),
        pytest.param("encoura", "http://api.example.org/v1", "only for loopback", id="enc-http"),
        pytest.param("collegeboard", "ftp://scores.example.org", "not an http(s) URL", id="ftp"),
        pytest.param("collegeboard", "scores.example.org", "not an http(s) URL", id="no-scheme"),
        pytest.param("collegeboard", "https://", "not an http(s) URL", id="no-host"),
        pytest.param(
            "collegeboard", "https://scores.example.org/?a=1", "no query", id="with-query"
        ),
        pytest.param(
            "collegeboard", "https://scores.example.org/#top", "no query", id="with-fragment"
        ),
    ],
)
def test_base_url_refused(tmp_path: Path, section: str, url: str, fragment: str) -> None:
    """Non-http(s), remote http, and URLs with a query or fragment are refused for base_url."""
    data = patched(minimal(), {f"{section}.base_url": url})
    message = load_error(write_yaml(tmp_path, data))
    assert f"{section}.base_url: " in message
    assert fragment in message


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({"download_dri": "/x"}, "download_dri: unknown key", id="top-level-typo"),
        pytest.param({"imap.hots": "x"}, "imap.hots: unknown key", id="imap-hots"),
        pytest.param(
            {"collegeboard.formts": ["csv"]}, "collegeboard.formts: unknown key", id="cb-formts"
        ),
        pytest.param({"log.colour": True}, "log.colour: unknown key", id="log-colour"),
        pytest.param(
            {"encoura": {"product_key": ["x"]}}, "encoura.product_key: unknown key", id="enc-typo"
        ),
        pytest.param(
            {"imap.token_file": "x"}, "imap.token_file: unknown key", id="non-secret-file-key"
        ),
        pytest.param({"download_dir": DELETE}, "download_dir: required key is missing", id="no-dl"),
        pytest.param({"state_dir": DELETE}, "state_dir: required key is missing", id="no-state"),
        pytest.param({"imap.host": DELETE}, "imap.host: required key is missing", id="no-host"),
        pytest.param(
            {"imap.password": DELETE}, "imap.password: required key is missing", id="no-imap-pw"
        ),
        pytest.param(
            {"collegeboard.username": DELETE},
            "collegeboard.username: required key is missing",
            id="no-cb-user",
        ),
        pytest.param(
            {"collegeboard.formats": ["csv", "xls"]},
            "collegeboard.formats[1]: 'xls' is not one of csv, txt, zip",
            id="format-xls",
        ),
        pytest.param(
            {"collegeboard.formats": []},
            "collegeboard.formats: list at least one of csv, txt, zip",
            id="formats-empty",
        ),
        pytest.param(
            {"collegeboard.senders": ["collegeboard.org"]},
            "collegeboard.senders: 'collegeboard.org' is neither an address nor an @domain",
            id="sender-without-at",
        ),
        pytest.param(
            {"collegeboard.senders": ["@localhost"]},
            "collegeboard.senders: '@localhost' is neither",
            id="sender-dotless-domain",
        ),
        pytest.param(
            {"collegeboard.senders": ["scores @collegeboard.org"]},
            "collegeboard.senders: ",
            id="sender-with-space",
        ),
        pytest.param(
            {"log.format": "xml"}, "log.format: 'xml' is not one of json, console", id="log-format"
        ),
        pytest.param(
            {"log.level": "trace"},
            "log.level: 'trace' is not one of debug, info, warning, error",
            id="log-level",
        ),
        pytest.param(
            {"imap.security": "ssl"},
            "imap.security: 'ssl' is not one of tls, starttls, plain",
            id="security-ssl",
        ),
        pytest.param({"imap.port": 0}, "imap.port: ", id="port-0"),
        pytest.param({"imap.port": 70000}, "imap.port: ", id="port-70000"),
        pytest.param({"imap.port": "imaps"}, "imap.port: ", id="port-word"),
        pytest.param({"imap.lookback_days": -1}, "imap.lookback_days: ", id="lookback-negative"),
        pytest.param({"collegeboard.max_parallel": 0}, "collegeboard.max_parallel: ", id="par-0"),
        pytest.param({"imap": "127.0.0.1"}, "imap: ", id="section-not-mapping"),
        pytest.param(
            {"imap": DELETE},
            "imap: required, because collegeboard is enabled",
            id="cb-without-imap",
        ),
    ],
)
def test_invalid_config_names_file_and_key_path(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    """Each invalid value is a ConfigError `<file>: <key path>: <reason>`."""
    path = write_yaml(tmp_path, patched(minimal(), changes))
    message = load_error(path)
    assert f"{path}: {expected}" in message


def test_spec_error_example_exact(tmp_path: Path) -> None:
    """The spec's own example message appears verbatim for formats: [csv, xls]."""
    path = write_text(
        tmp_path,
        """\
        download_dir: /srv/f
        state_dir: /srv/s
        imap: {host: localhost, security: plain, username: u, password: p}
        collegeboard:
          username: u
          password: p
          formats: [csv, xls]
        """,
    )
    message = load_error(path)
    assert "config.yaml: collegeboard.formats[1]: 'xls' is not one of csv, txt, zip" in message


def test_several_errors_are_reported_together(tmp_path: Path) -> None:
    """All validation errors of one file are reported, one per line, each with file and key path."""
    data = patched(minimal(), {"imap.hots": "x", "collegeboard.formts": ["csv"]})
    path = write_yaml(tmp_path, data)
    lines = load_error(path).splitlines()
    assert f"{path}: imap.hots: unknown key (check the spelling); did you mean 'host'?" in lines
    assert (
        f"{path}: collegeboard.formts: unknown key (check the spelling); did you mean 'formats'?"
        in lines
    )
    assert all(line.startswith(f"{path}: ") for line in lines)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("- download_dir\n- state_dir\n", "top level must be a mapping", id="list"),
        pytest.param("just a string\n", "top level must be a mapping", id="scalar"),
        pytest.param("", "top level must be a mapping", id="empty-file"),
        pytest.param("# only a comment\n", "top level must be a mapping", id="only-comment"),
        pytest.param("download_dir: [/srv\n", "not valid YAML", id="unclosed-flow"),
        pytest.param("a: b\n\tc: d\n", "not valid YAML", id="tab-indent"),
        pytest.param("a: b: c\n", "not valid YAML", id="nested-colon"),
    ],
)
def test_unusable_file_content_names_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    """Not a mapping at top level, or not YAML at all, is a ConfigError naming the file."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert fragment in load_error(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError naming the file."""
    assert "cannot read" in load_error(tmp_path / "absent.yaml")


def test_directory_instead_of_file_names_the_file(tmp_path: Path) -> None:
    """A config path that is a directory is a ConfigError naming it."""
    folder = tmp_path / "config.yaml"
    folder.mkdir()
    assert "cannot read" in load_error(folder)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode"
)
def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    """A config file without read permission is a ConfigError naming the file."""
    path = write_yaml(tmp_path, minimal())
    path.chmod(0)
    try:
        assert "cannot read" in load_error(path)
    finally:
        path.chmod(0o600)


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    """A config file that is not UTF-8 text is a ConfigError naming the file."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"download_dir: /srv/\xff\xfe\n")
    load_error(path)


# ---------------------------------------------------------------- default path


def test_default_path_prefers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """default_path is a non-empty $SCOREFETCH_CONFIG, else /etc/scorefetch/config.yaml."""
    monkeypatch.setenv("SCOREFETCH_CONFIG", "/opt/sf/config.yaml")
    assert config.default_path() == Path("/opt/sf/config.yaml")
    monkeypatch.setenv("SCOREFETCH_CONFIG", "")
    assert config.default_path() == Path("/etc/scorefetch/config.yaml")
    monkeypatch.delenv("SCOREFETCH_CONFIG")
    assert config.default_path() == Path("/etc/scorefetch/config.yaml")


# ---------------------------------------------------------------- masked / check-config


@pytest.fixture
def secret_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config whose four secrets come from an env var and from files, all distinctive."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("SCOREFETCH_CONFIG", raising=False)
    monkeypatch.setenv("IMAP_PASSWORD", IMAP_SECRET)
    (tmp_path / "cb_password").write_text(CB_SECRET + "\n")
    (tmp_path / "enc_key").write_text(ENCOURA_KEY + "\n")
    (tmp_path / "enc_pw").write_text(ENCOURA_SECRET + "\n")
    return write_text(
        tmp_path,
        f"""\
        download_dir: {tmp_path / "files"}
        state_dir: {tmp_path / "state"}
        imap:
          host: 127.0.0.1
          port: 1143
          security: plain
          username: scores@example.edu
          password: ${{IMAP_PASSWORD}}
        collegeboard:
          username: cb-user
          password_file: cb_password
          formats: [csv, txt]
          poll_interval: 15m
        encoura:
          api_key_file: enc_key
          username: enc-user
          password_file: enc_pw
        """,
    )


def test_masked_replaces_every_secret(secret_config: Path) -> None:
    """masked() is plain data with every secret as ******** and nothing else hidden."""
    data = config.masked(sources.load(secret_config))
    assert data["imap"]["password"] == MASK
    assert data["collegeboard"]["password"] == MASK
    assert data["encoura"]["api_key"] == MASK
    assert data["encoura"]["password"] == MASK
    assert data["imap"]["username"] == "scores@example.edu"
    assert data["collegeboard"]["formats"] == ["csv", "txt"]
    assert data["collegeboard"]["poll_interval"] == "15m"  # as a person writes it
    dumped = yaml.safe_dump(data)
    for secret in (IMAP_SECRET, CB_SECRET, ENCOURA_KEY, ENCOURA_SECRET):
        assert secret not in dumped


def test_check_config_prints_masked_yaml(
    secret_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config exits 0 and prints the effective config as YAML, passwords as ********."""
    assert main(["check-config", "-c", str(secret_config)]) == 0
    out, err = capsys.readouterr()
    for secret in (IMAP_SECRET, CB_SECRET, ENCOURA_KEY, ENCOURA_SECRET):
        assert secret not in out
        assert secret not in err
    printed = yaml.safe_load(out)
    assert printed["download_dir"] == str(tmp_path / "files")
    assert printed["imap"]["password"] == MASK
    assert printed["imap"]["port"] == 1143
    assert printed["imap"]["lookback_days"] == 14  # defaults are part of the effective config
    assert printed["collegeboard"]["password"] == MASK
    assert printed["collegeboard"]["formats"] == ["csv", "txt"]
    assert printed["collegeboard"]["poll_interval"] == "15m"
    assert printed["encoura"]["api_key"] == MASK
    assert printed["encoura"]["password"] == MASK
    assert "password_file" not in printed["collegeboard"]


def test_check_config_has_no_side_effects(
    secret_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config only validates: it creates neither download_dir nor state_dir."""
    assert main(["check-config", "-c", str(secret_config)]) == 0
    capsys.readouterr()
    assert not (tmp_path / "files").exists()
    assert not (tmp_path / "state").exists()


def test_check_config_invalid_exits_78_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An invalid config exits 78 (EX_CONFIG) with the file and key path on stderr."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    data = patched(minimal(), {"collegeboard.formats": ["csv", "xls"]})
    path = write_yaml(tmp_path, data)
    assert main(["check-config", "-c", str(path)]) == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: collegeboard.formats[1]: 'xls' is not one of csv, txt, zip" in err


def test_check_config_error_does_not_leak_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config error in a file that holds secrets prints none of them."""
    monkeypatch.setenv("IMAP_PASSWORD", IMAP_SECRET)
    data = patched(
        minimal(),
        {
            "imap.password": "${IMAP_PASSWORD}",
            "imap.port": "${IMAP_PASSWORD}",
            "collegeboard.password": CB_SECRET,
            "collegeboard.formts": ["csv"],
        },
    )
    path = write_yaml(tmp_path, data)
    assert main(["check-config", "-c", str(path)]) == 78
    out, err = capsys.readouterr()
    assert "imap.port" in err and "collegeboard.formts" in err
    for secret in (IMAP_SECRET, CB_SECRET):
        assert secret not in out + err


def test_check_config_missing_variable_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset ${VAR} exits 78 and stderr names the file, key path and variable."""
    monkeypatch.delenv("SCOREFETCH_TEST_UNSET_VAR", raising=False)
    path = write_yaml(
        tmp_path, patched(minimal(), {"imap.password": "${SCOREFETCH_TEST_UNSET_VAR}"})
    )
    assert main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{path}: imap.password: environment variable SCOREFETCH_TEST_UNSET_VAR" in err


def test_check_config_uses_scorefetch_config_env(
    secret_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -c, check-config reads $SCOREFETCH_CONFIG."""
    monkeypatch.setenv("SCOREFETCH_CONFIG", str(secret_config))
    assert main(["check-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["imap"]["password"] == MASK


def test_check_config_env_path_errors_name_that_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -c, an invalid $SCOREFETCH_CONFIG file exits 78 and is named on stderr."""
    path = write_yaml(tmp_path, patched(minimal(), {"imap.hots": "x"}), name="env.yaml")
    monkeypatch.setenv("SCOREFETCH_CONFIG", str(path))
    assert main(["check-config"]) == 78
    assert f"{path}: imap.hots: unknown key" in capsys.readouterr().err


def test_dash_c_wins_over_scorefetch_config(
    secret_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-c takes precedence over $SCOREFETCH_CONFIG."""
    monkeypatch.setenv("SCOREFETCH_CONFIG", str(tmp_path / "not-there.yaml"))
    assert main(["check-config", "-c", str(secret_config)]) == 0
    capsys.readouterr()


def test_check_config_missing_file_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file that does not exist exits 78 and stderr names it."""
    path = tmp_path / "absent.yaml"
    assert main(["check-config", "-c", str(path)]) == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: cannot read" in err


def test_check_config_non_utf8_file_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file that is not UTF-8 exits 78 naming the file, like any unreadable file."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe" + "download_dir: /srv\n".encode("utf-16-le"))
    assert main(["check-config", "-c", str(path)]) == 78
    assert str(path) in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["frobnicate"], id="unknown-subcommand"),
        pytest.param([], id="no-subcommand"),
        pytest.param(["check-config", "--bogus"], id="unknown-option"),
        pytest.param(["check-config", "-c"], id="dash-c-without-value"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse usage errors return 2 and print usage on stderr."""
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    """A key given twice in one mapping is an error naming the key, not last-one-wins."""
    path = tmp_path / "config.yaml"
    path.write_text("download_dir: /a\ndownload_dir: /b\nstate_dir: /s\n")
    with pytest.raises(ConfigError, match="duplicate key 'download_dir'"):
        sources.load(path, environ={})


# ---------------------------------------------------------------- imap.auth (XOAUTH2)

ENTRA_SECRET = "entra-client-SECRET-value"
GOOGLE_REFRESH = "1//google-REFRESH-value"


def with_auth(auth: dict[str, Any]) -> dict[str, Any]:
    return patched(minimal(), {"imap.password": DELETE, "imap.auth": auth})


MICROSOFT = {
    "method": "xoauth2",
    "provider": "microsoft",
    "tenant_id": "contoso.onmicrosoft.com",
    "client_id": "11111111-2222-3333-4444-555555555555",
}


def test_auth_defaults_to_password(tmp_path: Path) -> None:
    """Without imap.auth the method is password, as before."""
    loaded = sources.load(write_yaml(tmp_path, minimal()), environ={})
    assert loaded.imap is not None and loaded.imap.auth.method == "password"


def test_microsoft_with_secret_file(tmp_path: Path) -> None:
    """client_secret_file is read (relative to the config) into client_secret; defaults apply."""
    (tmp_path / "entra_secret").write_text(ENTRA_SECRET + "\n")
    data = with_auth({**MICROSOFT, "client_secret_file": "entra_secret"})
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert loaded.imap is not None
    auth = loaded.imap.auth
    assert isinstance(auth, config.MicrosoftOAuth)
    assert auth.client_secret is not None
    assert auth.client_secret.get_secret_value() == ENTRA_SECRET
    assert auth.authority == "https://login.microsoftonline.com"
    assert auth.scope == "https://outlook.office365.com/.default"
    assert ENTRA_SECRET not in repr(loaded)


def test_microsoft_with_certificate_file(tmp_path: Path) -> None:
    """certificate_file + thumbprint instead of a secret."""
    (tmp_path / "entra.pem").write_text("-----BEGIN PRIVATE KEY-----\nx\n")
    data = with_auth({**MICROSOFT, "certificate_file": "entra.pem", "thumbprint": "AB12"})
    loaded = sources.load(write_yaml(tmp_path, data), environ={})
    assert loaded.imap is not None and isinstance(loaded.imap.auth, config.MicrosoftOAuth)
    assert loaded.imap.auth.certificate is not None and loaded.imap.auth.thumbprint == "AB12"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        pytest.param(
            {"method": "oauth"},
            "imap.auth.method: 'oauth' is not one of password, xoauth2",
            id="method",
        ),
        pytest.param(
            {"method": "xoauth2"}, "imap.auth.provider: required key is missing", id="no-provider"
        ),
        pytest.param(
            {"method": "xoauth2", "provider": "yahoo"},
            "imap.auth.provider: 'yahoo' is not one of microsoft, google, command",
            id="provider",
        ),
        pytest.param(
            {**MICROSOFT, "client_secret": "x", "tenant_id": DELETE},
            "imap.auth.tenant_id: required key is missing",
            id="tenant",
        ),
        pytest.param(
            {**MICROSOFT, "client_secret": "x", "tenant": "t"},
            "imap.auth.tenant: unknown key",
            id="typo",
        ),
        pytest.param(
            MICROSOFT, "imap.auth.client_secret: give client_secret or certificate", id="none"
        ),
        pytest.param(
            {**MICROSOFT, "certificate": "pem"},
            "imap.auth.thumbprint: required with certificate",
            id="thumbprint",
        ),
        pytest.param(
            {**MICROSOFT, "client_secret": "x", "authority": "http://127.0.0.1:8080"},
            "imap.auth.authority: 'http://127.0.0.1:8080': msal accepts only an https://",
            id="msal-https",
        ),
        pytest.param(
            {
                "method": "xoauth2",
                "provider": "google",
                "client_id": "c",
                "client_secret": "s",
                "refresh_token": "r",
                "token_url": "http://oauth.example.com/token",
            },
            "imap.auth.token_url: 'http://oauth.example.com/token': http:// is accepted only "
            "for loopback hosts",
            id="google-http",
        ),
        pytest.param(
            {"method": "xoauth2", "provider": "google", "client_id": "c", "client_secret": "s"},
            "imap.auth.refresh_token: required key is missing",
            id="google-refresh",
        ),
        pytest.param(
            {"method": "xoauth2", "provider": "command", "token_command": []},
            "imap.auth.token_command: ",
            id="command-empty",
        ),
    ],
)
def test_auth_errors_name_the_key(tmp_path: Path, auth: dict[str, Any], expected: str) -> None:
    """Each mistake in imap.auth is reported at its key path."""
    auth = {k: v for k, v in auth.items() if v is not DELETE}
    assert expected in load_error(write_yaml(tmp_path, with_auth(auth)))


def test_password_with_xoauth2_is_an_error(tmp_path: Path) -> None:
    """A leftover imap.password next to xoauth2 is refused, not silently unused."""
    data = patched(minimal(), {"imap.auth": {**MICROSOFT, "client_secret": "x"}})
    assert "imap.password: not used with auth method xoauth2" in load_error(
        write_yaml(tmp_path, data)
    )


def test_password_auth_needs_password(tmp_path: Path) -> None:
    """Password login without a password names imap.password."""
    data = patched(minimal(), {"imap.password": DELETE})
    assert "imap.password: required" in load_error(write_yaml(tmp_path, data))


def test_check_config_masks_oauth_secrets_and_exits_78_on_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config prints client_secret and refresh_token as ********; a bad auth block
    exits 78 naming the key."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "refresh").write_text(GOOGLE_REFRESH + "\n")
    google = {
        "method": "xoauth2",
        "provider": "google",
        "client_id": "c.apps.googleusercontent.com",
        "client_secret": ENTRA_SECRET,
        "refresh_token_file": "refresh",
    }
    path = write_yaml(tmp_path, with_auth(google))
    assert main(["check-config", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert ENTRA_SECRET not in out + err and GOOGLE_REFRESH not in out + err
    printed = yaml.safe_load(out)["imap"]["auth"]
    assert printed["client_secret"] == MASK and printed["refresh_token"] == MASK
    assert printed["client_id"] == "c.apps.googleusercontent.com"

    bad = write_yaml(tmp_path, with_auth({**google, "provider": "gmail"}), name="bad.yaml")
    assert main(["check-config", "-c", str(bad)]) == 78
    assert "imap.auth.provider: 'gmail' is not one of" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "suggestion"),
    [
        (
            {"collegeboard.poll_intervall": "1h"},
            "collegeboard.poll_intervall: unknown key (check the spelling); "
            "did you mean 'poll_interval'?",
        ),
        (
            {"imap.idle_timout": "5m"},
            "imap.idle_timout: unknown key (check the spelling); did you mean 'idle_timeout'?",
        ),
        (
            {"stat_dir": "/x"},
            "stat_dir: unknown key (check the spelling); did you mean 'state_dir'?",
        ),
    ],
)
def test_misspelt_key_offers_the_near_one(
    tmp_path: Path, change: dict[str, Any], suggestion: str
) -> None:
    """A misspelt key names the allowed key it is closest to, among its own siblings."""
    path = write_yaml(tmp_path, patched(minimal(), change))
    assert suggestion in load_error(path)


def test_far_off_key_gets_no_guess(tmp_path: Path) -> None:
    """A key like nothing allowed there is only "unknown", with no wild guess."""
    path = write_yaml(tmp_path, patched(minimal(), {"imap.zzzzzz": 1}))
    assert load_error(path).endswith("imap.zzzzzz: unknown key (check the spelling)")


def test_check_config_echoes_durations_as_durations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`idle_timeout: 5m` is echoed as `5m` (not 300.0), a schedule item by item."""
    from scorefetch.cli import main

    data = patched(
        minimal(), {"imap.idle_timeout": "5m", "collegeboard.retry_schedule": [90, "2h"]}
    )
    path = write_yaml(tmp_path, data)
    assert main(["check-config", "-c", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["imap"]["idle_timeout"] == "5m"
    assert printed["collegeboard"]["retry_schedule"] == ["90s", "2h"]
