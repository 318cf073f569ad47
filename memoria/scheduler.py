"""The daily temporal decrement: once a day at midnight in ``DECREMENT_TZ``, in one region.

The timer is armed only while all of these hold:

* schedulers are not disabled (``DISABLE_SCHEDULERS`` / ``--disable-schedulers``, a hard opt-out);
* it was not cancelled by :func:`cancel_daily_decrement_timer` (until
  :func:`restart_daily_decrement_schedule`);
* this region leads: it holds the scheduler Lease (watched live), or no Lease is configured.

When it becomes armed it catches up: every date after the last one decremented, up to today, is
decremented in order (at most ``scheduler.max_catch_up_days``). Each run goes through the store's
fenced compare-and-set, with the Lease's transition count as fencing token, so a date is never
decremented twice, even by two processes that both believe they lead.

The scheduler sees the rest of the region only through :class:`~memoria.ports.DecrementTarget`
(run one date with one token), :class:`~memoria.ports.Leadership` pushed to
:meth:`DecrementScheduler.set_leadership`, a :class:`~memoria.ports.Clock` and the live settings.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from .metrics import RuntimeMetrics
from .ports import Clock, DecrementTarget, Leadership
from .settings import MemoriaSettings
from .store import DecrementOutcome

log = logging.getLogger("memoria.scheduler")

_MAX_SLEEP = 30.0  # re-read the clock at least this often (clock changes, offsets)


class OffsetClock:
    """Wall clock plus the configured offset (for drills that need midnight soon)."""

    def __init__(self, offset_seconds: Callable[[], float]) -> None:
        self._offset = offset_seconds

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._offset())


class DecrementScheduler:
    def __init__(
        self,
        target: DecrementTarget,
        settings: Callable[[], MemoriaSettings],
        metrics: RuntimeMetrics,
        *,
        leadership: Leadership,
        force_disabled: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.target = target
        self._settings = settings  # read live: PATCH /settings changes the zone or disables
        self.metrics = metrics
        self.force_disabled = force_disabled  # --disable-schedulers
        self.clock = clock or OffsetClock(lambda: settings().scheduler.clock_offset_seconds)
        self._cond = threading.Condition()
        self._cancelled = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.leadership = leadership
        self.armed = False
        self.last_outcome: DecrementOutcome | None = None
        self.runs: list[DecrementOutcome] = []  # this process's attempts, newest last (bounded)

    # -- state -------------------------------------------------------------------------------

    @property
    def disabled(self) -> bool:
        return self._settings().disable_schedulers or self.force_disabled

    def _should_arm(self) -> bool:
        return not (self.disabled or self._cancelled or self._stopping) and self.leadership.leading

    def set_leadership(self, leadership: Leadership) -> None:
        with self._cond:
            old = self.leadership
            changed = (leadership.leading, leadership.token) != (old.leading, old.token)
            # The log lines bracket the flip: "does not lead" is written before the state
            # changes, "leads" after, so logs of two regions order their flips truthfully.
            if changed and old.leading and not leadership.leading:
                log.info("leadership: this region does not lead (holder: %s)", leadership.holder)
            self.leadership = leadership
            self._cond.notify_all()
            if changed and leadership.leading:
                log.info("leadership: this region leads (fencing token %d)", leadership.token)
        if changed:
            self.metrics.leader.set(1 if leadership.leading else 0)
            self.metrics.fencing_token.set(leadership.token)
            if leadership.leading:
                # refuse older leaders in our store from now on, even before our first run
                self.target.raise_fencing_token(leadership.token)
            elif not old.leading:
                log.info("leadership: this region does not lead (holder: %s)", leadership.holder)

    def settings_changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def cancel(self) -> None:
        """Disarm the timer until :meth:`restart` (the guide's cancel_daily_decrement_timer)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        log.info("scheduler: daily decrement timer cancelled")

    def restart(self) -> None:
        """Re-arm (if allowed) and catch up now (the guide's restart_daily_decrement_schedule)."""
        with self._cond:
            self._cancelled = False
            self._cond.notify_all()
        if self._thread is None or not self._thread.is_alive():
            self.start()
        log.info("scheduler: daily decrement schedule restarted")

    def start(self) -> None:
        with self._cond:
            self._stopping = False
            if self._thread is not None and self._thread.is_alive():
                return  # one loop per process, whoever asks first
        self._thread = threading.Thread(target=self._loop, name="decrement-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        self._set_armed(False)

    # -- time --------------------------------------------------------------------------------

    def today(self) -> dt.date:
        return self.clock.now().astimezone(self._settings().timezone).date()

    def seconds_to_midnight(self) -> float:
        now = self.clock.now()
        zone = self._settings().timezone
        tomorrow = dt.datetime.combine(
            now.astimezone(zone).date() + dt.timedelta(days=1), dt.time(), zone
        )
        # compare in UTC: two datetimes sharing one ZoneInfo subtract as wall times, which is
        # an hour off on the days clocks change
        return max(0.0, (tomorrow.astimezone(dt.UTC) - now.astimezone(dt.UTC)).total_seconds())

    def due_dates(self) -> list[str]:
        today = self.today()
        last_raw = self.target.last_decrement_date()
        if not last_raw:
            return [today.isoformat()]
        last = dt.date.fromisoformat(last_raw)
        limit = self._settings().scheduler.max_catch_up_days
        first = max(last + dt.timedelta(days=1), today - dt.timedelta(days=max(0, limit - 1)))
        days = (today - first).days + 1
        return [(first + dt.timedelta(days=i)).isoformat() for i in range(max(0, days))]

    # -- running -----------------------------------------------------------------------------

    def run_date(self, date: str) -> DecrementOutcome:
        """One fenced attempt for ``date`` with the current fencing token."""
        token = self.leadership.token
        outcome = self.target.run_decrement(date, token)
        self.last_outcome = outcome
        self.runs = [*self.runs[-99:], outcome]
        if outcome.ran:
            log.info("decrement for %s: %d memories (fencing token %d)", date, outcome.rows, token)
        elif outcome.reason == "stale":
            log.error(
                "decrement for %s refused: fencing token %d is older than one already "
                "used in this store; another region leads",
                date,
                token,
            )
        else:
            log.info("decrement for %s already done (by %s)", date, outcome.last_by)
        return outcome

    def catch_up(self) -> list[DecrementOutcome]:
        return [self.run_date(date) for date in self.due_dates()]

    def _set_armed(self, armed: bool) -> None:
        if armed != self.armed:
            self.armed = armed
            self.metrics.scheduler_active.set(1 if armed else 0)
            log.info("scheduler: decrement timer %s", "armed" if armed else "disarmed")

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                arm = self._should_arm()
            self._set_armed(arm)
            if arm:
                try:
                    self.catch_up()
                except Exception:
                    # the store down, a bug: the timer must outlive it, and a retry is fenced
                    # like any run, so it cannot decrement a date twice
                    log.exception("scheduler: decrement failed; retrying in a few seconds")
                    with self._cond:
                        self._cond.wait(5)
                    continue
            with self._cond:
                if self._stopping:
                    return
                if arm != self._should_arm():
                    continue  # state changed while we ran: re-evaluate at once
                wait = min(self.seconds_to_midnight(), _MAX_SLEEP) if arm else None
                self._cond.wait(wait)

    def status(self) -> dict[str, Any]:
        last = self.last_outcome
        return {
            "armed": self.armed,
            "disabled": self.disabled,
            "cancelled": self._cancelled,
            "leading": self.leadership.leading,
            "fencing_token": self.leadership.token,
            "lease_holder": self.leadership.holder,
            "leadership_source": self.leadership.source,
            "time_zone": self._settings().decrement_tz,
            "seconds_to_midnight": round(self.seconds_to_midnight(), 3),
            "last_attempt": None
            if last is None
            else {
                "date": last.date,
                "ran": last.ran,
                "reason": last.reason,
                "rows": last.rows,
            },
        }
