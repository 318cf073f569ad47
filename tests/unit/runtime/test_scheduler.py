"""The decrement scheduler on its narrow interface: a fake clock, a fake decrement target and
leadership pushed by hand. No store, no Lease, no servers."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from memoria.metrics import RuntimeMetrics
from memoria.ports import Leadership, LeadershipSource
from memoria.scheduler import DecrementScheduler, OffsetClock
from memoria.settings import MemoriaSettings, SchedulerSettings
from memoria.store import DecrementOutcome

Eventually = Callable[[Callable[[], bool], str], None]  # the fixture in conftest.py


class FakeClock:
    def __init__(self, now: dt.datetime) -> None:
        self.current = now

    def now(self) -> dt.datetime:
        return self.current


class FakeTarget:
    """The store's fence in miniature: one run per date, in order, no token below the highest."""

    def __init__(self, last: str | None = None) -> None:
        self.last = last
        self.highest_token = 0
        self.runs: list[tuple[str, int]] = []
        self.failures = 0  # the next n runs raise
        self.lock = threading.Lock()

    def run_decrement(self, date: str, token: int) -> DecrementOutcome:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("store unreachable")
            self.runs.append((date, token))
            if token < self.highest_token:
                return DecrementOutcome(date, False, "stale", last_by="other")
            self.highest_token = token
            if self.last is not None and date <= self.last:
                return DecrementOutcome(date, False, "already", last_by="other")
            self.last = date
            return DecrementOutcome(date, True, "ran", 3, "here")

    def last_decrement_date(self) -> str | None:
        return self.last

    def raise_fencing_token(self, token: int) -> None:
        self.highest_token = max(self.highest_token, token)

    def dates(self) -> list[str]:
        with self.lock:
            return [date for date, _ in self.runs]


def _settings(**changes: object) -> MemoriaSettings:
    base: dict[str, object] = {
        "decrement_tz": "UTC",
        "disable_schedulers": False,
        "scheduler": SchedulerSettings(max_catch_up_days=31),
    }
    return MemoriaSettings(**{**base, **changes})  # type: ignore[arg-type]


class Harness:
    def __init__(self, now: dt.datetime, *, last: str | None = None, leading: bool = False):
        self.clock = FakeClock(now)
        self.target = FakeTarget(last)
        self.settings = _settings()
        self.metrics = RuntimeMetrics()
        self.scheduler = DecrementScheduler(
            self.target,
            lambda: self.settings,
            self.metrics,
            leadership=Leadership(leading=leading, token=0),
            clock=self.clock,
        )

    def gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name)

    def lead(self, token: int, *, leading: bool = True) -> None:
        self.scheduler.set_leadership(
            Leadership(
                leading=leading, token=token, holder="ns/here", source=LeadershipSource.LEASE
            )
        )


NOON = dt.datetime(2030, 6, 15, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def running() -> Iterator[Harness]:
    harness = Harness(NOON, last="2030-06-13")
    harness.scheduler.start()
    try:
        yield harness
    finally:
        harness.scheduler.stop()


# -- dates and time -------------------------------------------------------------------------


def test_first_run_decrements_today_only() -> None:
    assert Harness(NOON).scheduler.due_dates() == ["2030-06-15"]


def test_catch_up_covers_every_missed_date_in_order() -> None:
    assert Harness(NOON, last="2030-06-12").scheduler.due_dates() == [
        "2030-06-13",
        "2030-06-14",
        "2030-06-15",
    ]
    assert Harness(NOON, last="2030-06-15").scheduler.due_dates() == []


def test_catch_up_is_bounded_by_max_catch_up_days() -> None:
    harness = Harness(NOON, last="2030-01-01")
    harness.settings = _settings(scheduler=SchedulerSettings(max_catch_up_days=2))
    assert harness.scheduler.due_dates() == ["2030-06-14", "2030-06-15"]
    harness.settings = _settings(scheduler=SchedulerSettings(max_catch_up_days=0))
    assert harness.scheduler.due_dates() == ["2030-06-15"]


def test_today_is_the_date_in_decrement_tz() -> None:
    harness = Harness(dt.datetime(2030, 6, 15, 23, 30, tzinfo=dt.UTC))
    assert harness.scheduler.today() == dt.date(2030, 6, 15)
    harness.settings = _settings(decrement_tz="Asia/Tokyo")  # UTC+9: already the 16th
    assert harness.scheduler.today() == dt.date(2030, 6, 16)
    assert harness.scheduler.seconds_to_midnight() == pytest.approx(15.5 * 3600)  # from 08:30 JST


@pytest.mark.parametrize(
    ("utc", "hours"),
    [
        # Europe/Berlin springs forward on 2030-03-31: that day has 23 hours
        (dt.datetime(2030, 3, 30, 23, 30, tzinfo=dt.UTC), 22.5),
        # and falls back on 2030-10-27: 25 hours
        (dt.datetime(2030, 10, 26, 22, 30, tzinfo=dt.UTC), 24.5),
    ],
)
def test_seconds_to_midnight_across_daylight_saving_changes(utc: dt.datetime, hours: float) -> None:
    harness = Harness(utc)
    harness.settings = _settings(decrement_tz="Europe/Berlin")
    assert harness.scheduler.seconds_to_midnight() == pytest.approx(hours * 3600)


def test_offset_clock_adds_the_configured_offset() -> None:
    offset = 3600.0
    clock = OffsetClock(lambda: offset)
    assert clock.now() - dt.datetime.now(dt.UTC) == pytest.approx(
        dt.timedelta(hours=1), abs=dt.timedelta(seconds=5)
    )


# -- leadership ------------------------------------------------------------------------------


def test_leading_raises_the_fencing_token_at_once_and_sets_the_gauges() -> None:
    harness = Harness(NOON)
    harness.lead(7)
    assert harness.target.highest_token == 7  # before any run: older leaders are refused
    assert harness.gauge("memoria_scheduler_leader") == 1
    assert harness.gauge("memoria_fencing_token") == 7
    harness.lead(7, leading=False)
    assert harness.gauge("memoria_scheduler_leader") == 0
    assert harness.target.runs == []


def test_stepping_down_is_logged_before_the_flip(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="memoria.scheduler")
    harness = Harness(NOON)
    harness.lead(2)
    harness.lead(2, leading=False)
    messages = [r.getMessage() for r in caplog.records]
    assert "leadership: this region leads (fencing token 2)" in messages
    assert "leadership: this region does not lead (holder: ns/here)" in messages


def test_run_date_uses_the_current_token_and_reports_a_stale_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Harness(NOON)
    harness.lead(3)
    assert harness.scheduler.run_date("2030-06-14").ran
    harness.target.highest_token = 9  # a newer leader used this store meanwhile
    outcome = harness.scheduler.run_date("2030-06-15")
    assert (outcome.ran, outcome.reason) == (False, "stale")
    assert harness.target.runs == [("2030-06-14", 3), ("2030-06-15", 3)]
    assert harness.scheduler.last_outcome == outcome
    assert any(r.levelno == logging.ERROR and "refused" in r.getMessage() for r in caplog.records)


def test_status_reports_what_an_operator_needs() -> None:
    harness = Harness(NOON)
    harness.lead(4)
    harness.scheduler.run_date("2030-06-15")
    status = harness.scheduler.status()
    assert status["leading"] is True
    assert status["fencing_token"] == 4
    assert status["lease_holder"] == "ns/here"
    assert status["leadership_source"] == "lease"
    assert status["time_zone"] == "UTC"
    assert status["seconds_to_midnight"] == 12 * 3600
    assert status["last_attempt"] == {"date": "2030-06-15", "ran": True, "reason": "ran", "rows": 3}


# -- the timer -------------------------------------------------------------------------------


def test_a_standby_never_arms(running: Harness) -> None:
    time.sleep(0.1)
    assert not running.scheduler.armed
    assert running.target.runs == []
    assert running.gauge("memoria_scheduler_active") == 0


def test_leading_arms_and_catches_up_then_midnight_runs_the_new_day(
    running: Harness, eventually: Eventually
) -> None:
    running.lead(1)
    eventually(lambda: running.target.dates() == ["2030-06-14", "2030-06-15"], "the catch-up")
    assert running.scheduler.armed
    assert running.gauge("memoria_scheduler_active") == 1
    running.clock.current = dt.datetime(2030, 6, 16, 0, 0, 1, tzinfo=dt.UTC)
    running.scheduler.settings_changed()  # wakes the timer, as the real clock's timeout would
    eventually(lambda: running.target.dates()[-1:] == ["2030-06-16"], "the midnight run")
    assert running.target.dates() == ["2030-06-14", "2030-06-15", "2030-06-16"]


def test_losing_leadership_disarms(running: Harness, eventually: Eventually) -> None:
    running.lead(1)
    eventually(lambda: running.scheduler.armed, "armed")
    running.lead(1, leading=False)
    eventually(lambda: not running.scheduler.armed, "disarmed")


def test_cancel_and_restart(running: Harness, eventually: Eventually) -> None:
    running.lead(1)
    eventually(lambda: running.scheduler.armed, "armed")
    running.scheduler.cancel()
    eventually(lambda: not running.scheduler.armed, "disarmed by cancel")
    assert running.scheduler.status()["cancelled"] is True
    running.clock.current += dt.timedelta(days=1)
    running.scheduler.restart()
    eventually(lambda: running.target.dates()[-1:] == ["2030-06-16"], "the catch-up on restart")
    assert running.scheduler.armed


def test_disabling_through_settings_disarms_live(running: Harness, eventually: Eventually) -> None:
    running.lead(1)
    eventually(lambda: running.scheduler.armed, "armed")
    running.settings = _settings(disable_schedulers=True)
    running.scheduler.settings_changed()
    eventually(lambda: not running.scheduler.armed, "disarmed")
    assert running.scheduler.disabled


def test_force_disabled_is_a_hard_opt_out() -> None:
    target = FakeTarget()
    scheduler = DecrementScheduler(
        target,
        _settings,
        RuntimeMetrics(),
        leadership=Leadership(leading=True, token=0),
        force_disabled=True,
        clock=FakeClock(NOON),
    )
    scheduler.start()
    try:
        time.sleep(0.1)
        assert scheduler.disabled
        assert not scheduler.armed
        assert target.runs == []
    finally:
        scheduler.stop()


def test_a_failed_run_is_retried(running: Harness, eventually: Eventually) -> None:
    running.target.failures = 1
    running.lead(1)
    eventually(lambda: running.target.failures == 0, "the failed attempt")
    running.scheduler.settings_changed()  # cuts the retry pause short
    eventually(lambda: running.target.dates() == ["2030-06-14", "2030-06-15"], "the retry")


def test_stop_disarms_and_ends_the_thread(running: Harness, eventually: Eventually) -> None:
    running.lead(1)
    eventually(lambda: running.scheduler.armed, "armed")
    running.scheduler.stop()
    assert not running.scheduler.armed
    assert running.gauge("memoria_scheduler_active") == 0
