"""SSH keys as the configuration gives them: pinned server keys and the client's private key.
Errors name what is wrong with a key, never its material."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
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
    """The keys `path` (OpenSSH known_hosts format, hashed names too) holds for host:port."""
    try:
        keys = paramiko.HostKeys(str(path))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except paramiko.SSHException as exc:
        raise ValueError(f"{path} is not a known_hosts file ({exc})") from None
    found = keys.lookup(known_host_entry(host, port))
    if not found:
        raise ValueError(f"{path} has no key for {known_host_entry(host, port)}")
    return list(found.values())


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
