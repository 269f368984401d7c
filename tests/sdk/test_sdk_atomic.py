"""write_atomic: temp file in the same directory, fsync of the file and of the directory, old content on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from edgefleet.atomic import write_atomic


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Replace os.fsync with one that records (kind, inode) of every descriptor it syncs, then syncs it."""
    calls: list[tuple[str, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_write_atomic_fsyncs_the_file_then_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    calls = _record_fsyncs(monkeypatch)
    steps: list[str] = []
    write_atomic(target, b"new content", on_step=steps.append)
    assert target.read_bytes() == b"new content"
    # the file written (the same inode once renamed into place) first, the directory after the rename
    assert calls == [("file", target.stat().st_ino), ("dir", tmp_path.stat().st_ino)]
    assert steps == ["tmp_written", "replaced"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left


def test_write_atomic_text_streams_and_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _record_fsyncs(monkeypatch)
    target = tmp_path / "a" / "b" / "doc.txt"
    write_atomic(target, "héllo", parents=True)
    assert target.read_text("utf-8") == "héllo"

    def stream(fh: BinaryIO) -> None:
        for i in range(3):
            fh.write(bytes([i]) * 4)

    write_atomic(target, stream)
    assert target.read_bytes() == b"\0" * 4 + b"\1" * 4 + b"\2" * 4
    assert [kind for kind, _ in calls] == ["file", "dir", "file", "dir"]


def test_a_failure_mid_write_leaves_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "pointer"
    target.write_bytes(b"old content")

    def half_then_fail(fh: BinaryIO) -> None:
        fh.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["pointer"]  # the temp file is removed

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # the data never reached the disk: no rename
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(target, b"new content")
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["pointer"]


def test_a_failed_rename_leaves_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "orders.json"
    target.write_bytes(b"{}")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Read-only"):
        write_atomic(target, b'{"seq": 2}')
    assert target.read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["orders.json"]


def test_replace_dir_swaps_a_complete_directory_in(tmp_path: Path) -> None:
    from edgefleet.atomic import replace_dir, temp_name

    dest = tmp_path / "bundle"
    first = temp_name(dest)
    first.mkdir()
    (first / "a").write_text("1")
    replace_dir(first, dest)  # no dest yet: a plain rename
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"] and (dest / "a").read_text() == "1"

    second = temp_name(dest)
    second.mkdir()
    (second / "b").write_text("2")
    replace_dir(second, dest)  # the old one goes aside, then away
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert sorted(p.name for p in dest.iterdir()) == ["b"]

    third = temp_name(dest)
    third.mkdir()
    aside = tmp_path / "trash"
    replace_dir(third, dest, aside=aside)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"] and list(dest.iterdir()) == []
