"""Is a landed file what the vendor said it would be? College Board's listing gives
`fileSize` and `recordCount`, Encoura's `quantity`: bytes are compared with the size, data
rows with the count — a csv's lines less its header, a fixed-width file's lines. Pure
functions over the file's bytes; the caller decides what a mismatch means."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Mismatch:
    bytes: int
    expected_bytes: int | None
    rows: int | None
    expected_rows: int | None

    def describe(self) -> str:
        parts = []
        if self.expected_bytes is not None and self.bytes != self.expected_bytes:
            parts.append(f"{self.bytes} bytes, the vendor listed {self.expected_bytes}")
        if self.expected_rows is not None and self.rows != self.expected_rows:
            parts.append(f"{self.rows} data rows, the vendor listed {self.expected_rows}")
        return "; ".join(parts)


def data_rows(path: Path) -> int:
    """Lines of the file (a last line without its newline counts), less a csv's header."""
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1
    return max(0, lines - 1) if path.suffix.lower() == ".csv" else lines


def check(
    path: Path, size: int, expected_bytes: int | None, expected_rows: int | None
) -> Mismatch | None:
    """None when the file agrees with every figure the vendor gave (or gave none)."""
    if expected_bytes is None and expected_rows is None:
        return None
    rows = data_rows(path) if expected_rows is not None else None
    bytes_ok = expected_bytes is None or expected_bytes == size
    rows_ok = expected_rows is None or expected_rows == rows
    return None if bytes_ok and rows_ok else Mismatch(size, expected_bytes, rows, expected_rows)
