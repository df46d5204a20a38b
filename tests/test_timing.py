"""stguide.timing: seconds per part, nested parts counted once (exclusively), parts that add up to the whole."""
import time

from stguide import timing


def test_nested_parts_are_exclusive_and_add_up():
    t0 = time.perf_counter()
    with timing.recording() as seconds:
        with timing.part("outer"):
            time.sleep(0.05)
            with timing.part("inner"):
                time.sleep(0.1)
            with timing.part("inner"):  # a part entered twice adds up
                time.sleep(0.05)

        @timing.part("decorated")
        def work():
            time.sleep(0.02)
        work()
        work()
    total = time.perf_counter() - t0
    assert 0.14 <= seconds["inner"] < 0.3
    assert 0.04 <= seconds["outer"] < 0.1  # the inner 0.15 s is not counted twice
    assert 0.035 <= seconds["decorated"] < 0.1
    parts = timing.rounded(seconds, total)
    assert list(parts)[0] == "inner" and parts["other"] >= 0
    assert abs(sum(parts.values()) - total) <= 0.05 * len(parts) + 0.01  # each part rounded to 0.1 s


def test_parts_outside_a_recording_are_not_kept():
    with timing.part("nothing"):
        pass
    with timing.recording() as seconds:
        pass
    assert seconds == {}
