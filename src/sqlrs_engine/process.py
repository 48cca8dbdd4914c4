"""Run a child process: cancellable, streamed, bounded, and never left behind.

Every external program the engine runs (initdb, pg_ctl, psql, pgbench, Liquibase, cp, mount …)
goes through `run`:

- the child gets **its own process group** (`start_new_session=True`); cancelling (the job's
  `CancelToken`), a timeout, or an exception raised by the output callback terminates the
  whole group: SIGTERM, then SIGKILL after `term_grace` seconds. `run` returns or raises only
  once the child has been reaped.
- when the leader exits, whatever is left in its process group is SIGKILLed too (the group is
  killed while the leader is still an unreaped zombie, so its id cannot have been reused).
  A program that must outlive its launcher (a PostgreSQL postmaster started by `pg_ctl`) has
  to leave the group itself, as `pg_ctl` does with `setsid()`; `spares_group=True` leaves the
  group alone after a normal exit, for a launcher (`pg_ctl start -W`) that may exit before its
  child has called `setsid()`.
- stdout and stderr are read separately and delivered **as they arrive** to
  `on_output(stream, chunk)` with `stream` in `("stdout", "stderr")`, on the calling thread;
  `LineBuffer` / `run_lines` turn that into whole lines (for `initdb: <line>` log events).
- only the last `tail_bytes` of the combined output are kept (error details), so a chatty
  program cannot exhaust memory.
- `stdin` bytes are written by a helper thread, so a child that produces lots of output before
  reading all of its input cannot deadlock against us.
- `user=RunAs(...)` runs the child as another OS user (uid, gid, supplementary groups) with
  `HOME`, `USER` and `LOGNAME` set to that user's; without an explicit `cwd` it starts in that
  user's home directory (or `/`), because our own cwd is often not accessible to it.

- `die_with_parent=True` makes the kernel SIGKILL the child when the thread that started it
  dies — in practice when the engine is killed (`kill -9`, OOM): a client program (psql,
  pgbench) must not go on committing into an instance nobody supervises. It runs the child
  through `setpriv --pdeathsig KILL` (util-linux), after the user switch, because a
  `preexec_fn` is not safe in a threaded program and a credential change clears the setting.
- the child gets **every CPU the engine was given**, even while the engine's own threads are
  pinned to one (`sqlrs_engine.affinity`: it is forked on a spawner thread that kept them
  all; that thread lives until the engine stops, so `die_with_parent` keeps its meaning).

Cancellation raises `errors.cancelled()` (JobFailure `cancelled`, "task cancelled").
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import select
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlrs_engine.affinity import fork_with_every_cpu
from sqlrs_engine.cancel import NEVER_CANCELLED, CancelToken
from sqlrs_engine.errors import cancelled
from sqlrs_engine.faults import fault_point

OutputCallback = Callable[[str, bytes], None]
"""Receives (`"stdout"` | `"stderr"`, chunk) as the child writes."""

LineCallback = Callable[[str, str], None]
"""Receives (`"stdout"` | `"stderr"`, line without its line terminator)."""

DEFAULT_TAIL_BYTES = 64 * 1024
DEFAULT_TERM_GRACE = 1.0
_READ_SIZE = 64 * 1024
_POLL = 0.05
_DRAIN_AFTER_EXIT = 0.5
_EXITED = "exited"
"""Selector tag of the leader's pidfd."""


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid` (our unreaped child, so the pid cannot be reused), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


"""How long to keep reading after the group is dead, for pipes held by escaped daemons."""


@dataclass(frozen=True)
class RunAs:
    """An OS identity for a child process."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"

    @classmethod
    def from_name(cls, name: str) -> RunAs:
        """Look up a user by name (KeyError when there is no such user)."""
        entry = pwd.getpwnam(name)
        groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != entry.pw_gid)
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")

    @classmethod
    def current(cls) -> RunAs:
        """The identity this process runs as."""
        uid = os.geteuid()
        try:
            entry = pwd.getpwuid(uid)
            name, home = entry.pw_name, entry.pw_dir or "/"
        except KeyError:
            name, home = str(uid), os.environ.get("HOME", "/")
        return cls(name, uid, os.getegid(), tuple(os.getgroups()), home)

    @property
    def group_name(self) -> str:
        try:
            return grp.getgrgid(self.gid).gr_name
        except KeyError:
            return str(self.gid)


@dataclass(frozen=True)
class RunResult:
    """A finished child process."""

    argv: tuple[str, ...]
    exit_code: int
    """The exit status; negative `-N` when the process was killed by signal N (Popen style)."""
    output: str
    """The last `tail_bytes` of combined stdout+stderr, decoded (invalid UTF-8 replaced)."""
    truncated: bool = False
    """True when older output was dropped from `output`."""


class ProcessError(Exception):
    """A child process could not be started, exited non-zero (with `check=True`) or timed out."""

    def __init__(
        self,
        argv: Sequence[str],
        message: str,
        exit_code: int | None = None,
        output: str = "",
    ) -> None:
        detail = output.strip()
        super().__init__(f"{message}: {detail}" if detail else message)
        self.argv = tuple(argv)
        self.message = message
        self.exit_code = exit_code
        self.output = output


class ProcessTimeout(ProcessError):
    """The child ran longer than the `timeout` given to `run`; it was killed."""


@functools.cache
def _setpriv() -> str | None:
    """`setpriv` if it is installed and knows `--pdeathsig` (util-linux 2.33+)."""
    path = shutil.which("setpriv", path=os.defpath + ":/usr/bin:/bin")
    if path is None:
        return None
    try:
        probe = subprocess.run(
            [path, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return path if probe.returncode == 0 else None


def _describe(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "<empty argv>"


def child_env(
    env: Mapping[str, str] | None, user: RunAs | None, *, inherit: bool = True
) -> dict[str, str]:
    """The environment for a child: ours (when `inherit`) + `env`, with the user's HOME etc."""
    result: dict[str, str] = dict(os.environ) if inherit else {}
    if user is not None:
        result["HOME"] = user.home
        result["USER"] = user.name
        result["LOGNAME"] = user.name
        if "PATH" not in result:
            result["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    if env:
        result.update(env)
    return result


class _Tail:
    """The last `limit` bytes of everything appended."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.buf = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > 2 * self.limit or (self.limit == 0 and self.buf):
            self._trim()

    def _trim(self) -> None:
        excess = len(self.buf) - self.limit
        if excess > 0:
            del self.buf[:excess]
            self.truncated = True

    def text(self) -> str:
        self._trim()
        return self.buf.decode("utf-8", errors="replace")


class _Group:
    """Signals the child's process group, but never after the leader has been reaped."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lock = threading.Lock()
        self.reaped = False
        self.pidfd = _pidfd_open(proc.pid)
        """Readable once the leader exits (Linux ≥ 5.3); None elsewhere."""

    def signal(self, signum: int) -> None:
        with self.lock:
            if self.reaped:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)

    def leader_exited(self) -> bool:
        """True once the leader is a zombie (or gone); does not reap it."""
        with self.lock:
            if self.reaped:
                return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def wait_leader(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the leader to exit; True once it has.

        Sleeps on the leader's pidfd (readable the moment it exits) instead of polling, so a
        finished program is noticed at once (issue 16: the 10 ms polls added up on every
        cache hit); falls back to short polls where pidfds do not exist.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.leader_exited():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sleep_until_exit(left)

    def sleep_until_exit(self, timeout: float) -> None:
        """Block until the leader exits or `timeout` passes (whichever is first)."""
        if self.pidfd is None:
            time.sleep(min(timeout, 0.01))
            return
        select.select([self.pidfd], [], [], max(0.0, timeout))

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None

    def reap(self, *, kill: bool = True) -> int:
        """Kill what is left of the group (leader is a zombie: its id is still ours), reap the
        leader, and wait until no live member of the group remains (SIGKILL is asynchronous).
        `kill=False` (`spares_group`): only reap the leader."""
        if kill:
            self.signal(signal.SIGKILL)
        with self.lock:
            self.reaped = True
        code = self.proc.wait()
        self.close()
        if kill:
            _wait_group_gone(self.proc.pid)
        return code

    def terminate(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after `grace` seconds if the leader is still alive."""
        self.signal(signal.SIGTERM)
        if not self.wait_leader(grace):
            self.signal(signal.SIGKILL)
            self.wait_leader(30.0)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_members(pgid: int) -> list[int]:
    """Non-zombie processes in process group `pgid` (from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read().decode("utf-8", errors="replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X", "x") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """After the leader is reaped: SIGKILL and wait out any member still alive.

    While a group has members its id cannot be reused, so signalling it is safe as long as
    `killpg(pgid, 0)` says it exists. Members that are already zombies (waiting for init to
    reap them) do not count.
    """
    deadline = time.monotonic() + timeout
    while _group_exists(pgid):
        members = _live_members(pgid)
        if not members or time.monotonic() >= deadline:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _feed_stdin(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            pipe.close()


def spawn(
    argv: Sequence[str],
    *,
    stdin: int,
    stdout: int,
    stderr: int,
    env: Mapping[str, str],
    cwd: Path | str | None,
    user: RunAs | None,
    die_with_parent: bool,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, as `user`, dying with us when asked (see the
    module docstring); for a caller that talks to the child itself (`run` is the usual way).

    `env` is passed as it is (build it with `child_env`). Raises ProcessError when the
    program cannot be started.
    """
    argv = [os.fspath(a) for a in argv]
    if user is not None and cwd is None:
        cwd = user.home if os.path.isdir(user.home) else "/"
    switch = user is not None and (user.uid != os.geteuid() or user.gid != os.getegid())
    setpriv = _setpriv() if die_with_parent else None
    exec_argv = [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            exec_argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            user=user.uid if switch and user else None,
            group=user.gid if switch and user else None,
            extra_groups=list(user.groups) if switch and user else None,
        )

    try:
        return fork_with_every_cpu(start)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProcessError(argv, f"cannot start {_describe(argv)}: {exc}") from exc


def run(
    argv: Sequence[str],
    *,
    cancel: CancelToken = NEVER_CANCELLED,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    cwd: Path | str | None = None,
    stdin: bytes | None = None,
    user: RunAs | None = None,
    on_output: OutputCallback | None = None,
    tail_bytes: int = DEFAULT_TAIL_BYTES,
    timeout: float | None = None,
    term_grace: float = DEFAULT_TERM_GRACE,
    check: bool = False,
    die_with_parent: bool = False,
    spares_group: bool = False,
) -> RunResult:
    """Run `argv` to completion; see the module docstring for the guarantees.

    Raises JobFailure `cancelled` on cancel, `ProcessTimeout` after `timeout` seconds,
    `ProcessError` when the program cannot be started (or exits non-zero with `check=True`),
    and re-raises whatever `on_output` raises — in every case after the process group is dead.
    """
    argv = [os.fspath(a) for a in argv]
    cancel.raise_if_cancelled()
    proc = spawn(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(env, user, inherit=inherit_env),
        cwd=cwd,
        user=user,
        die_with_parent=die_with_parent,
    )
    fault_point(f"spawned:{os.path.basename(argv[0])}")  # crash tests: freeze with a live child
    group = _Group(proc)
    unregister = cancel.register(lambda: group.signal(signal.SIGTERM))
    tail = _Tail(tail_bytes)
    writer: threading.Thread | None = None
    try:
        if stdin is not None:
            writer = threading.Thread(
                target=_feed_stdin, args=(proc.stdin, stdin), name="stdin-writer", daemon=True
            )
            writer.start()
        exit_code = _pump(
            argv, proc, group, tail, on_output, cancel, timeout, term_grace, spares_group
        )
    except BaseException:
        # Cancel, timeout, or a callback that raised: nothing of the group may survive.
        group.terminate(term_grace)
        group.reap()
        raise
    finally:
        unregister()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if writer is not None:
            writer.join(timeout=5)
    result = RunResult(tuple(argv), exit_code, tail.text(), tail.truncated)
    if check and exit_code != 0:
        raise ProcessError(
            argv, f"{_describe(argv)} exited with code {exit_code}", exit_code, result.output
        )
    return result


def _pump(
    argv: Sequence[str],
    proc: subprocess.Popen[bytes],
    group: _Group,
    tail: _Tail,
    on_output: OutputCallback | None,
    cancel: CancelToken,
    timeout: float | None,
    term_grace: float,
    spares_group: bool = False,
) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        os.set_blocking(pipe.fileno(), False)
        selector.register(pipe.fileno(), selectors.EVENT_READ, name)
    if group.pidfd is not None:  # the leader's exit wakes the loop at once
        selector.register(group.pidfd, selectors.EVENT_READ, _EXITED)
    pipes = 2
    drain_deadline: float | None = None
    try:
        while True:
            if cancel.cancelled:
                group.terminate(term_grace)
                raise cancelled()
            if deadline is not None and time.monotonic() >= deadline:
                group.terminate(term_grace)
                raise _timeout(argv, timeout, tail)
            if pipes == 0:
                break
            if drain_deadline is None and group.leader_exited():
                # Leader gone: kill leftovers now, then read what is buffered until EOF.
                if not spares_group:
                    group.signal(signal.SIGKILL)
                drain_deadline = time.monotonic() + _DRAIN_AFTER_EXIT
            if drain_deadline is not None and time.monotonic() >= drain_deadline:
                break  # a daemon outside the group still holds our pipe: stop reading
            for key, _ in selector.select(_POLL):
                fd = key.fd
                if key.data is _EXITED:
                    selector.unregister(fd)  # noticed; `leader_exited` says so from now on
                    continue
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    pipes -= 1
                    continue
                tail.add(chunk)
                if on_output is not None:
                    on_output(str(key.data), chunk)
        while not group.leader_exited():
            if cancel.cancelled:
                group.terminate(term_grace)
                raise cancelled()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                group.terminate(term_grace)
                raise _timeout(argv, timeout, tail)
            # A cancel signals the group, so the exit wakes us; _POLL bounds the wait anyway.
            group.sleep_until_exit(_POLL if deadline is None else min(_POLL, deadline - now))
        if cancel.cancelled:
            # The leader may have died *because* of the cancel: report a cancel, not an exit.
            raise cancelled()
        return group.reap(kill=not spares_group)
    finally:
        selector.close()


def _timeout(argv: Sequence[str], timeout: float | None, tail: _Tail) -> ProcessTimeout:
    return ProcessTimeout(
        argv, f"{_describe(argv)} timed out after {timeout or 0:g}s", None, tail.text()
    )


class LineBuffer:
    """Split chunks of two streams into lines: `feed(stream, chunk)`, then `flush()`.

    Lines are decoded as UTF-8 (invalid bytes replaced) without their `\\n` / `\\r\\n`. A
    final line without a newline is delivered by `flush()`. Lines longer than `max_line`
    bytes are delivered in pieces so a newline-free stream cannot grow the buffer without
    bound.
    """

    def __init__(self, on_line: LineCallback, max_line: int = 64 * 1024) -> None:
        self.on_line = on_line
        self.max_line = max_line
        self._pending: dict[str, bytearray] = {}

    def feed(self, stream: str, chunk: bytes) -> None:
        buf = self._pending.setdefault(stream, bytearray())
        buf += chunk
        while True:
            index = buf.find(b"\n")
            if index < 0:
                break
            line = bytes(buf[:index])
            del buf[: index + 1]
            self._emit(stream, line)
        while len(buf) > self.max_line:
            piece = bytes(buf[: self.max_line])
            del buf[: self.max_line]
            self._emit(stream, piece)

    def flush(self) -> None:
        for stream, buf in self._pending.items():
            if buf:
                line = bytes(buf)
                buf.clear()
                self._emit(stream, line)

    def _emit(self, stream: str, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        self.on_line(stream, line.decode("utf-8", errors="replace"))


def run_lines(
    argv: Sequence[str],
    *,
    on_line: LineCallback,
    cancel: CancelToken = NEVER_CANCELLED,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    cwd: Path | str | None = None,
    stdin: bytes | None = None,
    user: RunAs | None = None,
    tail_bytes: int = DEFAULT_TAIL_BYTES,
    timeout: float | None = None,
    term_grace: float = DEFAULT_TERM_GRACE,
    check: bool = False,
    spares_group: bool = False,
) -> RunResult:
    """`run` with output delivered as whole lines: `on_line(stream, line)`.

    A last line without a newline is delivered when the process has ended normally.
    """
    lines = LineBuffer(on_line)
    result = run(
        argv,
        cancel=cancel,
        env=env,
        inherit_env=inherit_env,
        cwd=cwd,
        stdin=stdin,
        user=user,
        on_output=lines.feed,
        tail_bytes=tail_bytes,
        timeout=timeout,
        term_grace=term_grace,
        check=False,
        spares_group=spares_group,
    )
    lines.flush()
    if check and result.exit_code != 0:
        raise ProcessError(
            argv,
            f"{_describe(argv)} exited with code {result.exit_code}",
            result.exit_code,
            result.output,
        )
    return result


def exit_status(code: int) -> int:
    """A shell-style status: `128 + N` for a process killed by signal N, else `code`."""
    return 128 - code if code < 0 else code


__all__ = [
    "DEFAULT_TAIL_BYTES",
    "DEFAULT_TERM_GRACE",
    "LineBuffer",
    "LineCallback",
    "OutputCallback",
    "ProcessError",
    "ProcessTimeout",
    "RunAs",
    "RunResult",
    "child_env",
    "exit_status",
    "run",
    "run_lines",
    "spawn",
]
