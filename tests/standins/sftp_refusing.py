"""An SFTP subsystem for sshd that is OpenSSH's own `sftp-server` with one fault: while the
file named by `--trigger` exists, the `--nth` write of a session is refused with
SSH_FX_FAILURE, as a full disk refuses it, and is never carried out; the writes after it go
through (the space came back). The trigger is removed when it fires, so the next session is
the plain server.

    Subsystem sftp /usr/bin/python3 sftp_refusing.py --trigger /tmp/x/refuse --nth 2

Standard library only: sshd runs it as a command, outside the project's environment.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
WRITE, STATUS, FAILURE = 6, 101, 4


def read_packet(stream: BinaryIO) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    (length,) = struct.unpack(">I", head)
    body = stream.read(length)
    return head + body if len(body) == length else None


def failure(request_id: bytes) -> bytes:
    text, lang = b"Failure", b""
    body = (
        bytes([STATUS])
        + request_id
        + struct.pack(">I", FAILURE)
        + struct.pack(">I", len(text))
        + text
        + struct.pack(">I", len(lang))
        + lang
    )
    return struct.pack(">I", len(body)) + body


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trigger", type=Path, required=True)
    parser.add_argument("--nth", type=int, default=2)
    args = parser.parse_args()
    binary = next(path for path in SERVERS if os.access(path, os.X_OK))
    server = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    to_client, lock = sys.stdout.buffer, threading.Lock()

    def answers() -> None:
        assert server.stdout is not None
        while (packet := read_packet(server.stdout)) is not None:
            with lock:
                to_client.write(packet)
                to_client.flush()

    threading.Thread(target=answers, daemon=True).start()
    writes = 0
    while (packet := read_packet(sys.stdin.buffer)) is not None:
        if packet[4] == WRITE:
            writes += 1
            if writes == args.nth and args.trigger.exists():
                args.trigger.unlink()
                with lock:
                    to_client.write(failure(packet[5:9]))
                    to_client.flush()
                continue
        server.stdin.write(packet)
        server.stdin.flush()
    server.stdin.close()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
