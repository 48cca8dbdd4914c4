"""One warm JVM for all Liquibase commands of a job, instead of one JVM per changeset.

An lb prepare runs Liquibase once to plan and once per changeset; with a process per run,
a JVM start (about 1.3 s here) is most of each changeset's cost. Liquibase's command line
entry point (`LiquibaseCommandLine.execute(String[])`) can be called repeatedly in one JVM, so
a tiny Java program reads one command per line on stdin, runs it, and answers with a sentinel
line carrying the exit code. Each command opens and closes its own database connection, so
the server can be stopped for the snapshot between two commands.

This needs a standard Liquibase distribution (`<home>/internal/lib/liquibase-core.jar`, as
npm installs it) and a JDK (`javac`, to compile the program once into the state store). When
either is missing, or the warm JVM cannot start, the caller runs one process per command as
the reference engine does: same arguments, same output, only slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sqlrs_engine.cancel import CancelToken
from sqlrs_engine.errors import JobFailure
from sqlrs_engine.process import ProcessError, RunAs, run, spawn

log = logging.getLogger(__name__)

CLASS_NAME = "SqlrsLbStepper"
SENTINEL = "\x02sqlrs-exit "
SEPARATOR = "\x01"
SOURCE = """\
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import liquibase.integration.commandline.LiquibaseCommandLine;

/** sqlrs-engine: runs one Liquibase command per stdin line in this JVM (see lb_jvm.py). */
public class SqlrsLbStepper {
    public static void main(String[] ignored) throws Exception {
        BufferedReader in = new BufferedReader(
            new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] args = line.isEmpty() ? new String[0] : line.split("\\u0001", -1);
            int code;
            try {
                code = new LiquibaseCommandLine().execute(args);
            } catch (Throwable error) {
                error.printStackTrace();
                code = 1;
            }
            System.err.flush();
            System.out.flush();
            System.out.println("\\u0002sqlrs-exit " + code);
            System.out.flush();
        }
    }
}
"""


def liquibase_home(executable: str) -> Path | None:
    """The distribution directory of a `liquibase` launcher script, if it is a standard one."""
    home = Path(os.path.realpath(executable)).parent
    return home if (home / "internal" / "lib" / "liquibase-core.jar").is_file() else None


def _jdk_tool(name: str, env: Mapping[str, str]) -> str | None:
    java_home = env.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / name
        return str(candidate) if os.access(candidate, os.X_OK) else None
    found = shutil.which(name, path=env.get("PATH"))
    if found is None:
        return None
    # javac lives next to the real java binary (/usr/bin/java is an alternatives link)
    sibling = Path(os.path.realpath(found)).parent / name
    return str(sibling) if os.access(sibling, os.X_OK) else found


def compiled_stepper(home: Path, tools_dir: Path, env: Mapping[str, str]) -> Path | None:
    """The directory holding the compiled program for this Liquibase, compiling it once."""
    core = home / "internal" / "lib" / "liquibase-core.jar"
    stamp = f"{SOURCE}\0{core}\0{core.stat().st_size}\0{core.stat().st_mtime_ns}"
    target = tools_dir / "liquibase-stepper" / hashlib.sha256(stamp.encode()).hexdigest()[:16]
    if (target / f"{CLASS_NAME}.class").is_file():
        _readable_by_all(target)  # compiled by an engine that kept it private
        return target
    javac = _jdk_tool("javac", env)
    java = _jdk_tool("java", env)
    if javac is None or java is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        (work / f"{CLASS_NAME}.java").write_text(SOURCE, encoding="utf-8")
        result = run(
            [javac, "-nowarn", "-cp", f"{home}/internal/lib/*", "-d", str(work),
             str(work / f"{CLASS_NAME}.java")],
            env=env, inherit_env=False, timeout=120,
        )  # fmt: skip
        if result.exit_code != 0:
            log.warning("cannot compile the Liquibase stepper: %s", result.output.strip())
            return None
        (work / f"{CLASS_NAME}.java").unlink()
        _readable_by_all(work)
        try:
            os.rename(work, target)
        except OSError:
            if not (target / f"{CLASS_NAME}.class").is_file():
                raise
        return target
    except (OSError, ProcessError) as error:
        log.warning("cannot compile the Liquibase stepper: %s", error)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def direct_command(
    executable: str, env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]] | None:
    """What the `liquibase` launcher script of a standard distribution would run, or None.

    The launcher starts the JVM as its child instead of exec'ing it, so a parent-death
    signal set on the launcher would not reach the JVM; running `java` directly (the same
    `JAVA_HOME` / bundled JRE choice, JAVA_OPTS, `-jar liquibase-core.jar`, with
    `LIQUIBASE_HOME` in the environment) lets the JVM itself die with the engine.
    Returns the command and the variables to add to its environment.
    """
    home = liquibase_home(executable)
    if home is None:
        return None
    bundled = home / "jre" / "bin" / "java"
    if not env.get("JAVA_HOME") and os.access(bundled, os.X_OK):
        java: str | None = str(bundled)
    else:
        java = _jdk_tool("java", env)
    if java is None:
        return None
    core = home / "internal" / "lib" / "liquibase-core.jar"
    argv = [java, *env.get("JAVA_OPTS", "").split(), "-jar", str(core)]
    return argv, {"LIQUIBASE_HOME": str(home)}


def _readable_by_all(classes: Path) -> None:
    """The unprivileged Liquibase user (SPEC §0.9) loads the class: `tools/`, the stepper
    directories 0755, the class 0644 (it holds nothing secret)."""
    for directory in (classes.parent.parent, classes.parent, classes):
        if stat.S_IMODE(directory.stat().st_mode) != 0o755:
            os.chmod(directory, 0o755)
    compiled = classes / f"{CLASS_NAME}.class"
    if stat.S_IMODE(compiled.stat().st_mode) != 0o644:
        os.chmod(compiled, 0o644)


class WarmLiquibase:
    """A running stepper JVM; `run` executes one command, `close` ends it (idempotent)."""

    def __init__(self, proc: subprocess.Popen[bytes], cancel: CancelToken) -> None:
        self._proc = proc
        self._lock = threading.Lock()
        self._closed = False
        self._unregister = cancel.register(self.kill)
        self._cancel = cancel

    @classmethod
    def start(
        cls,
        executable: str,
        *,
        tools_dir: Path,
        cwd: str | None,
        env: Mapping[str, str],
        cancel: CancelToken,
        user: RunAs | None = None,
    ) -> WarmLiquibase | None:
        """A warm JVM for `executable`'s distribution, or None (then run one process each).

        The JVM runs as `user` (None: as the engine) and dies with the engine (parent-death
        signal); `env` is its whole environment (with `user`'s HOME etc. already set).
        """
        home = liquibase_home(executable)
        if home is None:
            log.info("liquibase %s is not a standard distribution: one JVM per command", executable)
            return None
        classes = compiled_stepper(home, tools_dir, env)
        java = _jdk_tool("java", env)
        if classes is None or java is None:
            log.info("no JDK (javac) for a warm Liquibase JVM: one JVM per command")
            return None
        argv = [
            java,
            *env.get("JAVA_OPTS", "").split(),
            "-cp",
            f"{classes}:{home}/internal/lib/*:{home}/lib/*",
            CLASS_NAME,
        ]
        try:
            proc = spawn(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**env, "LIQUIBASE_HOME": str(home)},
                user=user,
                die_with_parent=True,
            )
        except ProcessError as error:
            log.warning("cannot start the Liquibase stepper: %s", error)
            return None
        return cls(proc, cancel)

    def run(self, args: Sequence[str], on_line: Callable[[str], None]) -> int:
        """Run one Liquibase command; its exit code. Lines are passed on as they come."""
        if any(SEPARATOR in arg or "\n" in arg for arg in args):
            raise JobFailure("invalid_argument", "liquibase arguments must not contain newlines")
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write((SEPARATOR.join(args) + "\n").encode("utf-8"))
            self._proc.stdin.flush()
        except OSError:
            return self._died()
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith(SENTINEL):
                return int(line[len(SENTINEL) :])
            on_line(line)
        return self._died()

    def _died(self) -> int:
        self._cancel.raise_if_cancelled("task cancelled")
        code = self._proc.wait()
        raise JobFailure(
            "internal_error", "liquibase execution failed", f"the Liquibase JVM exited ({code})"
        )

    def kill(self) -> None:
        """Kill the JVM's whole process group (cancel, or the job is done)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        self._unregister()
        with contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        self._proc.wait()
        if self._proc.stdout is not None:
            with contextlib.suppress(OSError):
                self._proc.stdout.close()
