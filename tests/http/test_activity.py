"""In-flight counting for the idle timeout: a request counts until its response is closed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from sqlrs_engine.http.activity import ActivityTracker


class Clock:
    """A clock the test moves by hand (the tracker takes its clock as a parameter)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> ActivityTracker:
    return ActivityTracker(clock)


def server_close(result: Iterable[bytes]) -> None:
    """What a WSGI server does when it is done with a response (PEP 3333)."""
    close = getattr(result, "close", None)
    assert close is not None, "the tracked response must be closable"
    close()


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def test_idle_time_counts_from_creation(clock: Clock, tracker: ActivityTracker) -> None:
    clock.now += 5
    assert tracker.in_flight == 0
    assert tracker.idle_for() == 5


def test_a_request_in_flight_means_not_idle(clock: Clock, tracker: ActivityTracker) -> None:
    """However long a request (a stream) lasts, the idle timer sees 0 until it ends."""
    tracker.enter()
    clock.now += 3600
    assert tracker.in_flight == 1
    assert tracker.idle_for() == 0.0
    tracker.leave()
    assert tracker.idle_for() == 0.0, "idle time starts when the last request ends"
    clock.now += 2
    assert tracker.idle_for() == 2


def test_idle_starts_only_when_the_last_request_ends(
    clock: Clock, tracker: ActivityTracker
) -> None:
    tracker.enter()
    tracker.enter()
    clock.now += 10
    tracker.leave()
    clock.now += 10
    assert (tracker.in_flight, tracker.idle_for()) == (1, 0.0)
    tracker.leave()
    clock.now += 1
    assert (tracker.in_flight, tracker.idle_for()) == (0, 1)


def test_touch_restarts_the_idle_time(clock: Clock, tracker: ActivityTracker) -> None:
    clock.now += 50
    tracker.touch()
    clock.now += 1
    assert tracker.idle_for() == 1


def test_counting_is_thread_safe(tracker: ActivityTracker) -> None:
    """Cheroot runs requests on many threads at once; no update may be lost."""

    def work() -> None:
        for _ in range(2000):
            tracker.enter()
            tracker.leave()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.in_flight == 0


# -- the middleware ------------------------------------------------------------------------


class StreamApp:
    """A WSGI app answering with a generator, like the events and runs streams."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        return self.body()

    def body(self) -> Iterator[bytes]:
        try:
            yield b"one\n"
            yield b"two\n"
        finally:
            self.closed = True


def test_a_stream_counts_until_its_response_is_closed(
    clock: Clock, tracker: ActivityTracker
) -> None:
    inner = StreamApp()
    result = tracker.middleware(inner)({}, start_response)
    assert tracker.in_flight == 1, "counted from the moment the request arrives"
    assert list(result) == [b"one\n", b"two\n"]
    clock.now += 30
    assert tracker.in_flight == 1, "a fully read response still counts until it is closed"
    server_close(result)
    assert tracker.in_flight == 0
    assert inner.closed
    clock.now += 4
    assert tracker.idle_for() == 4


def test_closing_a_stream_early_closes_the_inner_response(tracker: ActivityTracker) -> None:
    """A client that leaves mid-stream: the server closes the response, which ends the run."""
    inner = StreamApp()
    result = tracker.middleware(inner)({}, start_response)
    iterator = iter(result)
    assert next(iterator) == b"one\n"
    server_close(result)
    assert inner.closed
    assert tracker.in_flight == 0


def test_close_twice_leaves_once(tracker: ActivityTracker) -> None:
    """Servers may close twice (error paths); the count must never go negative."""
    result = tracker.middleware(StreamApp())({}, start_response)
    server_close(result)
    server_close(result)
    assert tracker.in_flight == 0
    tracker.enter()
    assert tracker.in_flight == 1


def test_a_plain_list_response_is_counted_too(tracker: ActivityTracker) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"ok\n"]

    result = tracker.middleware(app)({}, start_response)
    assert tracker.in_flight == 1
    assert list(result) == [b"ok\n"]
    server_close(result)
    assert tracker.in_flight == 0


def test_an_app_that_raises_does_not_stay_in_flight(tracker: ActivityTracker) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tracker.middleware(app)({}, start_response)
    assert tracker.in_flight == 0


def test_a_failing_inner_close_still_leaves(tracker: ActivityTracker) -> None:
    class FailingClose:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"x"])

        def close(self) -> None:
            raise OSError("socket gone")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return FailingClose()

    result = tracker.middleware(app)({}, start_response)
    with pytest.raises(OSError, match="socket gone"):
        server_close(result)
    assert tracker.in_flight == 0
