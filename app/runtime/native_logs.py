"""Keep TensorFlow's C++/absl log lines (`I0000 ...`, `W0000 ...`, `E0000 ...`) off the terminal.

TensorFlow 2.21 writes its start-up lines (oneDNN, CUDA stubs, ...) through absl before it reads
`TF_CPP_MIN_LOG_LEVEL`, so the variable alone does not silence them (measured: with
`TF_CPP_MIN_LOG_LEVEL=3` `import tensorflow` still prints four lines). They are written by C++
to file descriptor 2, where Python cannot filter them, so a command's stderr goes through a pipe
whose reader thread drops those lines and passes everything else on. A `TF_CPP_MIN_LOG_LEVEL`
the user set wins: then nothing is filtered. Fatal (`F...`) lines always pass.
"""

import atexit
import os
import re
import sys
import threading

NATIVE_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\]]+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    # The second line of cpu_feature_guard's start-up message.
    rb"|To enable the following instructions: .* rebuild TensorFlow with)"
)
# The unindented lines of a multi-line status message in a native line (a lost worker's
# collective abort, a coordination-service error): they follow it and are dropped with it.
STATUS_CONTINUATION = re.compile(
    rb"^(?:$|/job:|RPC: |Additional GRPC error|:UNKNOWN:|# of tasks|Original error"
    rb"|Some timed out|The (?:tasks have|error could be|first task)|This (?:usually|is usually)"
    rb"|Consider setting)"
)
_installed = False


def is_native_log_line(line: bytes) -> bool:
    """Whether `line` is an absl/TensorFlow C++ log line at level INFO, WARNING or ERROR."""
    return NATIVE_LINE.match(line) is not None


def drop_native_lines(lines: list[bytes], after_native: bool) -> tuple[list[bytes], bool]:
    """The lines to keep: neither native log lines nor their continuation lines (an op error's
    indented `\t [[{{node ...}}]]`, a status message's STATUS_CONTINUATION); `after_native` says
    whether the line before `lines` was dropped as native, and the second value whether the
    last line was."""
    kept = []
    for line in lines:
        after_native = is_native_log_line(line) or (after_native and (
            line[:1] in (b"\t", b" ") or STATUS_CONTINUATION.match(line) is not None))
        if not after_native:
            kept.append(line)
    return kept, after_native


def _forward(read_fd: int, out_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending, after_native = b"", False
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept, after_native = drop_native_lines(lines, after_native)
            if kept:
                os.write(out_fd, b"".join(line + b"\n" for line in kept))
        if pending:
            os.write(out_fd, b"".join(drop_native_lines([pending], after_native)[0]))


def filter_native_logs() -> None:
    """Route this process's stderr through the filter (once; no-op if the user set a level)."""
    global _installed
    if _installed or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    _installed = True
    sys.stderr.flush()
    terminal = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_forward, args=(read_fd, terminal), daemon=True)
    thread.start()

    def restore() -> None:
        # Runs after the last message (a SystemExit's text included) has entered the pipe.
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end: the reader drains and stops
        thread.join(timeout=5)

    atexit.register(restore)
