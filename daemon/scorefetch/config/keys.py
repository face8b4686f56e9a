"""SSH keys as the configuration gives them: pinned server keys and the client's private key.
Errors name what is wrong with a key, never its material."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import re
from pathlib import Path

import paramiko

# The host-key algorithms a server may sign with for each pinned key type (RSA keys sign
# with SHA-2 under their own names).
_ALGORITHMS = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256:base64 without padding."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_host_key(line: str) -> paramiko.PKey:
    """`ssh-ed25519 AAAA… [comment]`, or an ssh-keyscan line with the host first."""
    fields = line.split()
    if len(fields) >= 3 and not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        fields = fields[1:]  # `host type key` as ssh-keyscan prints it
    if len(fields) < 2:
        raise ValueError("a host key is 'TYPE BASE64' (e.g. ssh-ed25519 AAAAC3Nz…)")
    kind, data = fields[0], fields[1]
    try:
        blob = base64.b64decode(data, validate=True)
        key = paramiko.PKey.from_type_string(kind, blob)
    except (binascii.Error, ValueError, paramiko.SSHException) as exc:
        raise ValueError(f"not a public key of type {kind!r} ({type(exc).__name__})") from None
    if key.get_name() != kind:
        raise ValueError(f"the key data is {key.get_name()}, not {kind}")
    return key


def known_host_entry(host: str, port: int) -> str:
    """The name known_hosts files use for host:port."""
    return host if port == 22 else f"[{host}]:{port}"


def read_known_hosts(path: Path, host: str, port: int) -> list[paramiko.PKey]:
    """Every key `path` (OpenSSH known_hosts: patterns, negations, hashed names) holds for
    host:port, of every type (a rotation lists two of one type). A key on an `@revoked`
    line is never pinned, whatever host that line names; an `@cert-authority` line is
    refused: we pin servers' own keys, not a CA's. ValueError naming the line otherwise."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    entry = known_host_entry(host, port)
    found: list[paramiko.PKey] = []
    revoked: set[bytes] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            marker, names, key = _known_hosts_line(line)
        except ValueError as exc:
            raise ValueError(f"{path}, line {number}: {exc}") from None
        if key is None:
            continue
        if marker == "@revoked":
            revoked.add(key.asbytes())
        elif _host_matches(names, entry):
            found.append(key)
    pinned = [key for key in found if key.asbytes() not in revoked]
    if not pinned:
        why = " that is not @revoked" if found else ""
        raise ValueError(f"{path} has no key for {entry}{why}")
    return pinned


def _known_hosts_line(line: str) -> tuple[str, str, paramiko.PKey | None]:
    """(marker, host patterns, key) of one line; (…, None) for a blank line or a comment."""
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return "", "", None
    marker = fields.pop(0) if fields[0].startswith("@") else ""
    if marker == "@cert-authority":
        raise ValueError(
            "@cert-authority is not supported: pin the server's own host key "
            "(ssh-keyscan -p PORT HOST) instead of the CA that signs it"
        )
    if marker not in ("", "@revoked"):
        raise ValueError(f"unknown marker {marker[:40]!r} (OpenSSH knows @revoked)")
    if len(fields) < 3:
        raise ValueError("expected 'HOSTS TYPE BASE64 [comment]'")
    try:
        key = parse_host_key(f"{fields[1]} {fields[2]}")
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library surprise is this line's fault
        raise ValueError(f"not a public key ({type(exc).__name__})") from None
    return marker, fields[0], key


def _host_matches(names: str, entry: str) -> bool:
    """Whether a known_hosts host field (`a,b,*.c,!d` or a hashed `|1|salt|hash`) names
    `entry`; a negated pattern that matches rules the line out."""
    if names.startswith("|1|"):
        try:
            return hmac.compare_digest(paramiko.HostKeys.hash_host(entry, names), names)
        except (ValueError, binascii.Error, IndexError):
            raise ValueError("a hashed host name that is not |1|SALT|HASH") from None
    matched = False
    for pattern in names.split(","):
        negated = pattern.startswith("!")
        if _glob(pattern.removeprefix("!")).fullmatch(entry.lower()):
            if negated:
                return False
            matched = True
    return matched


def _glob(pattern: str) -> re.Pattern[str]:
    """OpenSSH's host pattern: `*` and `?` only (`[host]:port` brackets are literal)."""
    escaped = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(escaped)


def algorithms(keys: list[paramiko.PKey]) -> list[str]:
    """The host-key algorithms to offer: only those of the pinned keys, so the server signs
    with a key we can check."""
    names: list[str] = []
    for key in keys:
        for name in _ALGORITHMS.get(key.get_name(), (key.get_name(),)):
            if name not in names:
                names.append(name)
    return names


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """An OpenSSH or PEM private key (ed25519, ECDSA or RSA)."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            key: paramiko.PKey = cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ValueError("the private key is encrypted: give its passphrase") from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
        return key
    raise ValueError(
        "not an ed25519, ECDSA or RSA private key in OpenSSH or PEM form "
        "(or the passphrase is wrong)"
    )
