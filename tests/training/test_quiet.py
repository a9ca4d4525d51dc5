from datetime import datetime

import pytest

from understudy.training.quiet import QuietWindow


def at(hour, minute=0):
    return datetime(2026, 11, 29, hour, minute)


def test_no_configuration_is_always_quiet():
    assert QuietWindow.parse(None).is_quiet(at(12), recent_requests=10_000) == (True, "quiet")


def test_hours_window_and_wrapping_midnight():
    night = QuietWindow.parse("22:00-06:00")
    assert night.is_quiet(at(23), 0)[0] and night.is_quiet(at(2), 0)[0]
    assert not night.is_quiet(at(6), 0)[0] and not night.is_quiet(at(12), 0)[0]
    assert "outside quiet hours 22:00-06:00" in night.is_quiet(at(12), 0)[1]
    lunch = QuietWindow.parse("12:00-13:30")
    assert lunch.is_quiet(at(13, 29), 0)[0] and not lunch.is_quiet(at(13, 30), 0)[0]


def test_request_rate_threshold():
    window = QuietWindow.parse(None, max_requests_per_minute=2, rate_window_minutes=5)
    assert window.is_quiet(at(12), recent_requests=9)[0]  # 1.8/min
    quiet, why = window.is_quiet(at(12), recent_requests=10)  # 2.0/min
    assert not quiet and why.startswith("busy: 2.0 req/min")


def test_hours_and_rate_together():
    window = QuietWindow.parse("01:00-05:00", max_requests_per_minute=1)
    assert not window.is_quiet(at(3), recent_requests=100)[0]
    assert window.is_quiet(at(3), recent_requests=0)[0]
    assert not window.is_quiet(at(9), recent_requests=0)[0]


@pytest.mark.parametrize("bad", ["night", "25:00-01:00", "10:00", "10:61-11:00"])
def test_bad_hours_are_rejected(bad):
    with pytest.raises(ValueError):
        QuietWindow.parse(bad)
