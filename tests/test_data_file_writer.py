"""The child process that writes the converter's image copies: its protocol, its errors, its end."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import sys
from contextlib import nullcontext

import pytest

from data_fixtures import tree_bytes, write_coco_export, write_voc_export, write_yolo_export
from sam3_lora_kit.data.clean import CleanImage
from sam3_lora_kit.data.convert import convert_roboflow
from sam3_lora_kit.data.file_writer import BARRIER, FRAME, WRITE, FileWriterProcess, serve
from sam3_lora_kit.data.writer import SplitWriter


def frame(kind: int, target: bytes = b"", data: bytes = b"") -> bytes:
    return FRAME.pack(kind, len(target), len(data)) + target + data


def started() -> FileWriterProcess:
    writer = FileWriterProcess.start()
    assert writer is not None and writer.ready(), "this interpreter can start the child process"
    return writer


def test_serve_writes_files_and_answers_each_barrier(tmp_path):
    a, b, c = (os.fsencode(tmp_path / name) for name in ("a.jpg", "b ü.jpg", "c.jpg"))
    folder = tmp_path / "folder.jpg"
    folder.mkdir()  # a folder where a file must go: the write fails
    requests = io.BytesIO(frame(WRITE, a, b"aaa") + frame(BARRIER) + frame(WRITE, os.fsencode(folder), b"x")
                          + frame(WRITE, c, b"ccc") + frame(BARRIER) + frame(WRITE, b, b"bbb") + frame(BARRIER)
                          + frame(WRITE, a, b"cut short")[:-3])  # the parent died mid-frame: not written
    replies = io.BytesIO()
    serve(requests, replies)
    answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert len(answers) == 3 and answers[0] == {} and answers[2] == {}
    assert answers[1]["errno"] == errno.EISDIR and answers[1]["filename"] == str(folder)
    assert (tmp_path / "a.jpg").read_bytes() == b"aaa"  # not overwritten by the cut frame
    assert not (tmp_path / "c.jpg").exists()  # after the failed write: skipped
    assert (tmp_path / "b ü.jpg").read_bytes() == b"bbb"  # after the next barrier: written again


def test_process_writes_the_bytes_and_ends(tmp_path):
    with started() as writer:
        for index in range(200):  # more than the pipe holds: the parent blocks, nothing is lost
            writer.write(tmp_path / f"{index:03d} é.jpg", bytes([index]) * (index * 97))
        writer.wait()
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
            f"{index:03d} é.jpg": bytes([index]) * (index * 97) for index in range(200)}
    assert writer.returncode == 0
    with pytest.raises(ValueError, match="closed"):
        writer.write(tmp_path / "late.jpg", b"x")


def test_close_writes_what_was_sent(tmp_path):
    writer = started()
    writer.write(tmp_path / "a.jpg", b"a" * 100_000)
    writer.close()  # no wait(): close still lets the child write it, and returns after the child ended
    assert (tmp_path / "a.jpg").read_bytes() == b"a" * 100_000 and writer.returncode == 0


def test_process_raises_the_write_error_as_that_os_error(tmp_path):
    (tmp_path / "a.jpg").mkdir()
    with started() as writer:
        writer.write(tmp_path / "a.jpg", b"x")
        writer.write(tmp_path / "b.jpg", b"y")  # after the failed one: skipped
        with pytest.raises(IsADirectoryError) as failure:
            writer.wait()
        assert failure.value.filename == str(tmp_path / "a.jpg")
        assert not (tmp_path / "b.jpg").exists()
        writer.write(tmp_path / "c.jpg", b"z")  # the error was reported once; the child goes on
        writer.wait()
    assert (tmp_path / "c.jpg").read_bytes() == b"z"


def test_a_child_that_died_is_reported(tmp_path):
    writer = started()
    os.kill(writer.pid, signal.SIGKILL)
    with pytest.raises(OSError, match="ended unexpectedly"):
        for index in range(100):  # the pipe takes a few frames before the parent sees the end
            writer.write(tmp_path / f"{index}.jpg", b"x" * 10_000)
        writer.wait()
    writer.close()
    assert writer.returncode == -signal.SIGKILL


def test_abandon_stops_the_child(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with started() as writer:
            writer.write(tmp_path / "a.jpg", b"x")
            raise KeyboardInterrupt
    assert writer.returncode is not None  # ended (killed, or done first) before the block was left


@pytest.mark.parametrize("with_process", [False, True])
def test_split_writer_raises_a_file_error(tmp_path, with_process):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jpg").mkdir()  # a folder where the image must go
    with FileWriterProcess.start() if with_process else nullcontext() as file_writer:
        with pytest.raises(IsADirectoryError):
            with SplitWriter(tmp_path / "train", ["cat"], file_writer=file_writer) as writer:
                writer.add(tmp_path / "a.jpg", CleanImage("a.jpg", 4, 4, [], data=b"x"))
                writer.finish()
    assert not (tmp_path / "train" / "_annotations.coco.json").exists()


@pytest.mark.parametrize("write_export", [write_coco_export, write_yolo_export, write_voc_export])
@pytest.mark.parametrize("executable", ["", "true"])
def test_conversion_without_a_child_process_gives_the_same_files(tmp_path, monkeypatch, write_export, executable):
    """Where no child starts (no ``sys.executable``) or it is not the writer (a program that says
    nothing and ends), the writer's thread writes the same bytes."""
    src = write_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "with")
    monkeypatch.setattr(sys, "executable", shutil.which(executable) or "" if executable else "")
    if executable:
        assert sys.executable, f"{executable} is on PATH"
        child = FileWriterProcess.start()
        assert child is not None and not child.ready() and child.returncode is not None
        with pytest.raises(OSError, match="did not start"):
            child.write(tmp_path / "x.jpg", b"x")
    else:
        assert FileWriterProcess.start() is None
    convert_roboflow(src, tmp_path / "without")
    with_child, without = tree_bytes(tmp_path / "with"), tree_bytes(tmp_path / "without")
    assert with_child == without and any(name.endswith(".jpg") for name in with_child)


def test_an_interrupted_conversion_ends_the_child_and_leaves_nothing(tmp_path, monkeypatch):
    src = write_voc_export(tmp_path / "export")
    children: list[FileWriterProcess] = []
    real_start = FileWriterProcess.start.__func__

    def start(cls):
        children.append(real_start(cls))
        return children[-1]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(FileWriterProcess, "start", classmethod(start))
    monkeypatch.setattr(SplitWriter, "finish", interrupt)  # after the first split's images were sent
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(KeyboardInterrupt):
        convert_roboflow(src, tmp_path / "out")
    assert len(children) == 1 and children[0].returncode is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no partial folder


def test_linking_starts_no_child(tmp_path, monkeypatch):
    src = write_yolo_export(tmp_path / "export")
    monkeypatch.setattr(FileWriterProcess, "start", classmethod(lambda cls: pytest.fail("a child was started")))
    convert_roboflow(src, tmp_path / "out", link=True)
    assert any((tmp_path / "out").rglob("*.jpg"))
