"""Write image files in a child Python process, so the copies overlap with the cleaning of the next images.

A conversion that copies an export's images spends about a third of its time in the system calls
that create and write each file. Made from a thread, every call ends by waiting for the interpreter
lock, which the main thread holds while it cleans the next image, so the two mostly take turns. A
child interpreter has its own lock: it writes while the parent cleans (VOC, 4,010 images, by hand:
1.27 s against 1.02 s; see the converter benchmark).

The child first says ``ready`` on stdout; where it cannot run (this file inside a zip, an
interpreter that is not Python), ``ready()`` is False and the caller writes the files itself. The
parent then sends frames on the child's stdin: a write (target path and bytes) or a barrier. At a
barrier the child answers on stdout with one JSON line once every file sent before it is written:
``{}``, or the first error since the previous barrier (``errno``, ``strerror``, ``filename``; the
writes after a failed one are skipped). End of input stops the child.

This module imports only the standard library: the child runs this file as a script with
``python -I -S`` (no site-packages, no user environment; about 25 ms to start).
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

FRAME = struct.Struct("<BII")  # kind, length of the target path, length of the data (bytes)
WRITE, BARRIER = 1, 2
READY = b"ready\n"  # the child's first line
READY_TIMEOUT_S = 30.0  # how long ``ready()`` waits for it (POSIX; a child that is not this script may never say it)
PIPE_BUFFER = 1 << 16  # the parent's buffer in front of the pipe: about six 10 kB images per system call
# what open(target, "wb") asks for: binary (Windows), not inherited by child processes
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def write_bytes(target: str | bytes | Path, data: bytes) -> None:
    """``open(target, "wb").write(data)`` in three system calls (open, write, close)."""
    fd = os.open(target, WRITE_FLAGS, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The child's loop: write each file sent on ``requests``; answer each barrier on ``replies``."""
    read = requests.read
    error: dict | None = None  # the first failed write since the last barrier
    while True:
        head = read(FRAME.size)
        if len(head) < FRAME.size:
            return  # the parent closed the pipe (or died): stop
        kind, target_length, data_length = FRAME.unpack(head)
        target, data = read(target_length), read(data_length)
        if len(target) < target_length or len(data) < data_length:
            return  # cut short: the parent died mid-frame
        if kind == BARRIER:
            replies.write(json.dumps(error or {}).encode("utf-8") + b"\n")
            replies.flush()
            error = None
        elif error is None:
            try:
                write_bytes(target, data)
            except OSError as failure:
                error = {"errno": failure.errno, "strerror": failure.strerror, "filename": os.fsdecode(target)}


class FileWriterProcess:
    """A child process writing files: ``write`` queues one, ``wait`` returns once all queued are written.

    Use ``start()``, which gives None where no child can be started, and ask ``ready()`` before
    the first ``write`` (which raises where it is False); in both cases write the files in-process.
    ``wait`` raises the first write's error as the ``OSError`` the write itself raised (for
    example ``IsADirectoryError``, ``PermissionError``). ``close`` (or leaving a ``with`` block)
    returns once the child has ended, so the caller may delete what it wrote.
    """

    def __init__(self, process: subprocess.Popen) -> None:
        self._process: subprocess.Popen | None = process
        self._ready: bool | None = None  # unknown until the child's first line is read
        self.pid = process.pid
        self.returncode: int | None = None  # the child's exit status, once ``close`` has returned

    @classmethod
    def start(cls) -> FileWriterProcess | None:
        """A new child process, or None when this interpreter cannot start one (no ``sys.executable``)."""
        if not sys.executable:
            return None
        command = [sys.executable, "-I", "-S", str(Path(__file__).resolve())]
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, bufsize=PIPE_BUFFER)  # errors come as replies
        except OSError:
            return None
        return cls(process)

    def __enter__(self) -> FileWriterProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.close(abandon=kind is not None)

    def ready(self) -> bool:
        """Whether the child runs and takes files (waits for its first line, once); if not, it is closed."""
        if self._ready is None:
            self._ready = self._process is not None and self._first_line() == READY
            if not self._ready:
                self.close(abandon=True)
        return self._ready

    def _first_line(self) -> bytes:
        stdout = self._process.stdout
        if os.name == "posix":  # select() takes pipes on POSIX only
            import select

            if not select.select([stdout], [], [], READY_TIMEOUT_S)[0]:
                return b""
        return stdout.readline()

    def write(self, target: str | Path, data: bytes) -> None:
        """Queue ``data`` to be written at ``target`` (blocks while the pipe is full)."""
        name = os.fsencode(target)
        self._send(FRAME.pack(WRITE, len(name), len(data)), name, data)

    def wait(self) -> None:
        """Return once every file queued so far is written; raise the first error since the last ``wait``."""
        self._send(FRAME.pack(BARRIER, 0, 0))
        try:
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        except BrokenPipeError:
            line = b""
        if not line:
            raise self._ended()
        error = json.loads(line)
        if error:
            raise OSError(error["errno"], error["strerror"], error["filename"])

    def close(self, abandon: bool = False) -> None:
        """End the child and return once it has ended; errors not yet reported by ``wait`` are dropped.

        By default the child first writes what it was sent; ``abandon`` (the caller is failing and
        will delete the output) stops it at once, possibly in the middle of a file.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if abandon:
            process.kill()
        try:
            process.stdin.close()  # flushes what is queued, then end of input
        except BrokenPipeError:
            pass
        self.returncode = process.wait()
        process.stdout.close()

    def _send(self, *parts: bytes) -> None:
        if not self.ready():
            raise OSError("the process writing the image files did not start")
        if self._process is None:
            raise ValueError("the file-writing process is closed")
        try:
            for part in parts:
                self._process.stdin.write(part)
        except BrokenPipeError:
            raise self._ended() from None

    def _ended(self) -> OSError:
        try:
            code = self._process.wait(timeout=10)  # it closed its end of a pipe: it is ending
        except subprocess.TimeoutExpired:
            code = "none yet"
        return OSError(f"the process writing the image files ended unexpectedly (exit code {code})")


def _main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes the pipe
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    _main()
