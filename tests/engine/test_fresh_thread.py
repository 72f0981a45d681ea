import threading

import pytest

from lmserve.engine.fresh_thread import run_in_fresh_thread


def test_returns_the_result_computed_on_another_thread_that_then_ends():
    seen = []

    def work():
        seen.append(threading.current_thread())
        return 42
    assert run_in_fresh_thread(work) == 42
    assert seen[0] is not threading.current_thread()
    assert not seen[0].is_alive()


def test_reraises_the_exception_of_the_work():
    def work():
        raise FileNotFoundError("no such model: /nope")
    with pytest.raises(FileNotFoundError, match="/nope"):
        run_in_fresh_thread(work)
