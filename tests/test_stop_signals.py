"""`stop_on_signals` must not lose a stop signal, wherever in the main thread it lands."""

import os
import signal
import time
import weakref

import pytest

from layerq.stack import Shutdown, stop_on_signals


class _Resource:
    pass


def _wait_for_shutdown(bound_s: float = 5.0) -> None:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_signal_raises_shutdown():
    with pytest.raises(Shutdown) as caught, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        _wait_for_shutdown()
    assert caught.value.signum == signal.SIGTERM


def test_a_shutdown_dropped_by_a_finalizer_is_raised_again():
    # CI saw `layerq up` ignore SIGTERM: the handler ran inside a weakref finalizer, where Python
    # prints the exception ("Exception ignored in ...") and drops it.
    dropped = []

    def finalizer():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs here, inside the finalizer
        except Shutdown:
            dropped.append(True)
            raise

    with pytest.raises(Shutdown) as caught, stop_on_signals():
        resource = _Resource()
        weakref.finalize(resource, finalizer)
        del resource  # the finalizer runs now
        assert dropped, "the signal was handled outside the finalizer: the test proves nothing"
        _wait_for_shutdown()
    assert caught.value.signum == signal.SIGTERM


def test_other_unraisable_exceptions_still_reach_the_earlier_hook(monkeypatch):
    seen = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: seen.append(type(u.exc_value)))

    def failing_finalizer():
        raise ValueError("a finalizer's own error")

    with stop_on_signals():
        resource = _Resource()
        weakref.finalize(resource, failing_finalizer)
        del resource
    assert seen == [ValueError]


def test_a_second_signal_while_stopping_only_prints(capsys):
    with pytest.raises(Shutdown), stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            _wait_for_shutdown()
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # during the stop: a note, no second Shutdown
            time.sleep(0.05)
    assert "SIGINT: already stopping" in capsys.readouterr().out
