"""`sqlrs-engine`: flags, logging, signals and exit codes (SPEC §1.1 to §1.3).

Flags follow Go's `flag` package, which the `sqlrs` CLI is written against: `-x` and `--x`,
`--x=v` and `--x v` all work. Exit codes: 2 for flag errors, 1 for start-up or serving
failures, 0 after a clean shutdown (signal or idle timeout).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from sqlrs_engine import __version__
from sqlrs_engine.config.atomic import ConfigLoadError
from sqlrs_engine.config.defaults import MAX_HTTP_THREADS, MIN_HTTP_THREADS
from sqlrs_engine.discovery import EngineInfo
from sqlrs_engine.durations import DurationError, parse_duration
from sqlrs_engine.engine import Engine, EngineOptions, run_until_stopped
from sqlrs_engine.errors import StartupRefused
from sqlrs_engine.http.server import is_loopback, parse_listen
from sqlrs_engine.logsetup import configure_logging
from sqlrs_engine.memory import release_free_memory, return_large_allocations

log = logging.getLogger("sqlrs_engine")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _parser() -> _Parser:
    parser = _Parser(prog="sqlrs-engine", add_help=True, allow_abbrev=False)
    parser.add_argument(
        "-listen", "--listen", help="TCP host:port to serve on (127.0.0.1:0 picks a free port)"
    )
    parser.add_argument(
        "-write-engine-json",
        "--write-engine-json",
        dest="engine_json",
        help="path of the discovery file",
    )
    parser.add_argument(
        "-run-dir", "--run-dir", dest="run_dir", default="", help="created with mode 0700"
    )
    parser.add_argument(
        "-idle-timeout",
        "--idle-timeout",
        dest="idle_timeout",
        default="30s",
        help="Go duration; 0 disables",
    )
    parser.add_argument(
        "-allow-non-loopback",
        "--allow-non-loopback",
        dest="allow_non_loopback",
        action="store_true",
        help="allow --listen on a non-loopback address (the API is plain HTTP: anyone who can "
        "reach it sees the token and the DSNs in transit)",
    )
    parser.add_argument(
        "-version",
        "--version",
        dest="version",
        default="dev",
        help="version string reported and hashed into states",
    )
    parser.add_argument(
        "-http-threads",
        "--http-threads",
        dest="http_threads",
        type=int,
        default=None,
        help="HTTP worker threads (default: config http.threads)",
    )
    return parser


_VALUE_FLAGS = ("listen", "write-engine-json", "run-dir", "idle-timeout", "version", "http-threads")
"""Every flag of the engine takes a value (`-h` aside)."""


def _attach_values(argv: Sequence[str]) -> list[str]:
    """`--flag value` → `--flag=value`, so that a value may start with `-` (`-1s`).

    Go's flag package always takes the next argument as a flag's value; argparse would read
    `--idle-timeout -1s` as two options and refuse it.
    """
    valued = {f"{dashes}{name}" for name in _VALUE_FLAGS for dashes in ("-", "--")}
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in valued:
            value = next(args, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def parse_options(argv: Sequence[str], environ: dict[str, str]) -> EngineOptions:
    """Flags and environment → options; raises `_UsageError` with the SPEC's messages."""
    args = _parser().parse_args(_attach_values(argv))
    if not args.listen:
        raise _UsageError("missing --listen")
    if not args.engine_json:
        raise _UsageError("missing --write-engine-json")
    try:
        host, port = parse_listen(args.listen)
        idle_timeout = parse_duration(args.idle_timeout)
    except (ValueError, DurationError) as error:
        raise _UsageError(str(error)) from None
    if not is_loopback(host) and not args.allow_non_loopback:
        raise _UsageError(
            f"--listen {args.listen} is not a loopback address: the API is plain HTTP, so "
            "anyone on the network could read the token and the instances' passwords; listen "
            "on 127.0.0.1 (or [::1]), or pass --allow-non-loopback to accept that risk"
        )
    threads = args.http_threads
    if threads is not None and not MIN_HTTP_THREADS <= threads <= MAX_HTTP_THREADS:
        raise _UsageError(
            f"--http-threads must be between {MIN_HTTP_THREADS} and {MAX_HTTP_THREADS}"
        )
    engine_json = Path(args.engine_json).absolute()
    store = environ.get("SQLRS_STATE_STORE") or str(engine_json.parent / "state-store")
    if args.run_dir:
        Path(args.run_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    return EngineOptions(
        listen_host=host,
        listen_port=port,
        engine_json=engine_json,
        state_store=Path(store).absolute(),
        idle_timeout=idle_timeout,
        version=args.version,
        http_threads=args.http_threads,
        non_loopback=not is_loopback(host),
    )


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.

    Every open event or run stream is a socket; the usual soft limit of 1024 would cap the
    engine below a thousand streams while the hard limit allows far more.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.warning("cannot raise the open-file limit from %d: %s", soft, error)
        return soft
    log.info("open-file limit raised from %d to %d", soft, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        options = parse_options(sys.argv[1:] if argv is None else argv, dict(os.environ))
    except _UsageError as error:
        print(f"sqlrs-engine: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"sqlrs-engine: {error}", file=sys.stderr)
        return EXIT_FAILURE
    configure_logging(options.engine_json.parent / "logs")
    return_large_allocations()
    log.info("sqlrs-engine version=%s build=%s pid=%d", options.version, __version__, os.getpid())
    if options.non_loopback:
        log.warning(
            "listening on non-loopback address %s (--allow-non-loopback): the API is plain "
            "HTTP; the token and the instances' DSNs cross the network unencrypted",
            options.listen_host,
        )
    raise_open_file_limit()

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    engine = Engine(options)
    started = threading.Event()

    def on_ready(_info: EngineInfo) -> None:
        started.set()
        release_free_memory()  # what start-up freed; the idle engine is smaller for it

    try:
        reason = run_until_stopped(engine, stop_requested, on_ready)
    except (StartupRefused, ConfigLoadError, OSError) as error:
        if started.is_set():
            log.exception("engine failed")
        else:
            # Expected refusals (a bad config, an unusable store, a taken port): one line.
            log.error("engine refused to start: %s", error)
        print(f"sqlrs-engine: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:
        log.exception("engine failed")
        print(f"sqlrs-engine: {error}", file=sys.stderr)
        return EXIT_FAILURE
    log.info("engine exited (%s)", reason)
    return EXIT_OK
