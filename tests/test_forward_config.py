"""The `forward:` and `retention:` configuration: pinned keys, placeholders, secrets in
files, error messages that name the key, and check-config masking."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scorefetch import sources
from scorefetch.cli import main
from scorefetch.core.errors import ConfigError
from scorefetch.sandbox.sshd import new_ed25519_key

PRIVATE, PUBLIC = new_ed25519_key()
_, HOST_KEY = new_ed25519_key()


def write(folder: Path, forward: str, extra: str = "") -> Path:
    secrets = folder / "credentials"
    secrets.mkdir(exist_ok=True)
    (secrets / "slate_ed25519").write_text(PRIVATE)
    (secrets / "slate_password").write_text("s3cr3t-slate-PASSWORD\n")
    path = folder / "config.yaml"
    path.write_text(
        f"download_dir: {folder / 'files'}\nstate_dir: {folder / 'state'}\n"
        + textwrap.dedent(forward)
        + extra
    )
    return path


SLATE = f"""\
forward:
  slate:
    type: sftp
    host: ft.technolutions.net
    username: "example@ft.technolutions.net"
    private_key_file: credentials/slate_ed25519
    host_key: "{HOST_KEY}"
    remote_dir: "/incoming/scores/{{vendor}}"
"""


def test_the_spec_example_loads_with_defaults(tmp_path: Path) -> None:
    """A destination from the spec's example, with every default as documented."""
    loaded = sources.load(write(tmp_path, SLATE, "retention:\n  keep_days: 30\n"), environ={})
    slate = loaded.forward["slate"]
    assert slate.port == 22 and slate.vendors == ("collegeboard", "encoura")
    assert slate.retry_schedule == (30.0, 120.0, 600.0, 3600.0, 21600.0)
    assert slate.timeout == 30.0
    assert slate.private_key is not None and "OPENSSH PRIVATE KEY" in (
        slate.private_key.get_secret_value()
    )
    assert [k.get_name() for k in slate.pinned_keys()] == ["ssh-ed25519"]
    assert loaded.retention.keep_days == 30


def test_defaults_without_forward_or_retention(tmp_path: Path) -> None:
    """No forward: nothing forwarded; no retention: files are kept forever."""
    loaded = sources.load(write(tmp_path, ""), environ={})
    assert loaded.forward == {} and loaded.retention.keep_days is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('    host_key: "{HOST_KEY}"\n', ""), "forward.slate.host_key: pin the server's key"),
        (
            ('"{HOST_KEY}"', '"ssh-ed25519 AAAAC3Nz..."'),
            "forward.slate.host_key[0]: not a public key",
        ),
        (("{vendor}", "{school}"), "unknown placeholder {school}"),
        (("{vendor}", "{product_key}"), "{product_key} is known only for encoura"),
        (("type: sftp", "type: ftp"), "forward.slate.type: 'ftp' is not one of sftp"),
        (("    username:", "    colour: blue\n    username:"), "forward.slate.colour: unknown key"),
        (
            ("private_key_file: credentials/slate_ed25519", "password: ''\n    password_file: x"),
            "give password or password_file, not both",
        ),
        (
            ("private_key_file: credentials/slate_ed25519", "private_key: not-a-key"),
            "forward.slate.private_key: not an ed25519, ECDSA or RSA private key",
        ),
        (("  slate:", "  'sla te':"), "a destination name is letters"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """Each mistake is a ConfigError naming the file and the key path."""
    old, new = change
    text = SLATE.replace(old.replace("{HOST_KEY}", HOST_KEY), new)
    with pytest.raises(ConfigError) as caught:
        sources.load(write(tmp_path, text), environ={})
    assert message in str(caught.value)
    assert str(tmp_path / "config.yaml") in str(caught.value)


def test_password_instead_of_a_key(tmp_path: Path) -> None:
    """password_file is accepted instead of a private key and read like other secrets."""
    text = SLATE.replace("private_key_file: credentials/slate_ed25519", "password_file: x")
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "x").write_text("pw\n")
    loaded = sources.load(
        write(tmp_path, text), environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "credentials")}
    )
    slate = loaded.forward["slate"]
    assert slate.password is not None and slate.password.get_secret_value() == "pw"


def test_known_hosts_file_must_hold_the_host(tmp_path: Path) -> None:
    """known_hosts_file is read at load time: a file without this host is an error."""
    known = tmp_path / "known_hosts"
    known.write_text(f"other.example.org {HOST_KEY}\n")
    text = SLATE.replace(f'host_key: "{HOST_KEY}"', f"known_hosts_file: {known}")
    with pytest.raises(ConfigError, match=r"known_hosts_file: .* has no key for ft\.technolutions"):
        sources.load(write(tmp_path, text), environ={})
    known.write_text(f"ft.technolutions.net {HOST_KEY}\n")
    assert sources.load(write(tmp_path, text), environ={}).forward["slate"].pinned_keys()


def test_host_key_may_be_a_list_or_a_keyscan_line(tmp_path: Path) -> None:
    """Several pinned keys (a rotation), in `ssh-keyscan` form with the host first too."""
    _, second = new_ed25519_key()
    text = SLATE.replace(
        f'host_key: "{HOST_KEY}"',
        f'host_key:\n      - "{HOST_KEY}"\n      - "ft.technolutions.net {second}"',
    )
    assert len(sources.load(write(tmp_path, text), environ={}).forward["slate"].pinned_keys()) == 2


def test_check_config_masks_the_key_and_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config shows the destination with its private key as ********."""
    path = write(tmp_path, SLATE)
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "private_key: '********'" in out and "OPENSSH" not in out and PRIVATE[50:90] not in out
    assert "remote_dir: /incoming/scores/{vendor}" in out


def test_retention_keep_days_must_be_positive(tmp_path: Path) -> None:
    """keep_days: 0 would delete everything at once: refused."""
    with pytest.raises(ConfigError, match=r"retention\.keep_days"):
        sources.load(write(tmp_path, "retention:\n  keep_days: 0\n"), environ={})
