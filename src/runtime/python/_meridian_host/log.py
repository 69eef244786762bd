"""Structured log lines in the JavaScript runtime's shape (pino's): one JSON object per line, a fixed
``msg`` plus fields. Events go to stdout; errors to stderr, where a plane's driver finds the reason."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Dict, Optional

# pino's numeric levels.
LEVELS = {"debug": 20, "info": 30, "warn": 40, "error": 50, "fatal": 60}


class Logger:
    def __init__(self, base: Dict[str, Any]) -> None:
        self._base = dict(base)
        self._lock = threading.Lock()

    def _write(self, level: str, msg: str, fields: Dict[str, Any]) -> None:
        record: Dict[str, Any] = {"level": LEVELS[level], "time": int(time.time() * 1000)}
        record.update(self._base)
        record.update(fields)
        record["msg"] = msg
        line = (json.dumps(record, default=str, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "replace"
        )
        fd = 2 if LEVELS[level] >= LEVELS["error"] else 1
        # One write per line, so a line is never split by a model's own output on the same stream.
        with self._lock:
            _write_all(fd, line)

    def info(self, msg: str, **fields: Any) -> None:
        self._write("info", msg, fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self._write("warn", msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._write("error", msg, fields)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            # A closed stream (the driver went away) must not take the host down with it.
            return
        view = view[n:]


_HOST_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_STDLIB_DIR = os.path.dirname(os.path.abspath(traceback.__file__)) + os.sep


def describe_exception(exc: BaseException) -> Dict[str, Any]:
    """pino's `err` shape: type, message and stack. The message is the traceback's last line, as Python
    prints it (`ValueError: weights missing`, or with file and line for a SyntaxError); the stack starts
    at the model's own code, leaving out the host's frames that lead there (as truss filters them)."""
    if isinstance(exc, SyntaxError):
        last = f"{type(exc).__name__}: {exc}"
    else:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    if type(exc).__module__.startswith("_meridian_host."):
        # The host's own exceptions (SecretNotFound, ...) by their bare name, as truss's read.
        last = last.replace(type(exc).__module__ + ".", "", 1)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not (filename.startswith(_HOST_DIR) or filename.startswith(_STDLIB_DIR)):
            break
        tb = tb.tb_next
    stack = "".join(traceback.format_exception(type(exc), exc, tb))
    described: Dict[str, Any] = {"type": type(exc).__name__, "message": last, "stack": stack}
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        # As Node's errors carry it (EADDRINUSE, ...): the plane's driver looks for it in the output.
        described["code"] = errno.errorcode[exc.errno]
    return described


class _JsonHandler(logging.Handler):
    """Routes a model's own `logging` records into the same JSON lines."""

    def __init__(self, logger: Logger) -> None:
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: Dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                fields["err"] = describe_exception(record.exc_info[1])
            level = "error" if record.levelno >= logging.ERROR else "warn" if record.levelno >= logging.WARNING else "info"
            self._logger._write(level, record.getMessage(), fields)
        except Exception:  # noqa: BLE001 - logging must never raise into model code
            self.handleError(record)


def route_python_logging(logger: Logger, level: Optional[int] = logging.INFO) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_JsonHandler(logger))
    if level is not None:
        root.setLevel(level)


def line_buffered_stdio() -> None:
    """A model's print() reaches the driver line by line, interleaved in order with the host's lines."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except (ValueError, OSError):
                pass
