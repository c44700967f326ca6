"""Schedules at fixed instants: windows, DST changes, holidays, overrides and pre-warm.

Every instant is written in UTC so the expectations do not depend on the code under test's own
conversion; the comments give the local wall-clock time it stands for.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from policies.scaling import schedule_limits
from policies.schedules import active_override, next_opening, open_spans, window_spans
from policies.spec import GPUPoolSpec, Schedule, Window
from policies.types import Reason

UTC = dt.UTC
ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
WEEK = dt.timedelta(days=7)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def schedule(
    timezone: str,
    *windows: dict[str, Any],
    dates: list[str] | None = None,
    calendars: list[dict[str, str]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> Schedule:
    return Schedule.model_validate(
        {
            "timezone": timezone,
            "windows": list(windows),
            "holidays": {"dates": dates or [], "calendars": calendars or []},
            "overrides": overrides or [],
        }
    )


def window(start: str, end: str, days: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"start": start, "end": end, "days": days or ALL_DAYS, **extra}


def pool(sched: Schedule, *, min_replicas: int = 0, max_replicas: int = 8, cold_start: int = 0) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate(
        {
            "target": {"deployment": "llm", "minReplicas": min_replicas, "maxReplicas": max_replicas},
            "schedule": sched.model_dump(by_alias=True),
            "coldStartSeconds": cold_start,
        }
    )


def span_on(sched: Schedule, local_day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """Opening and closing (UTC) of the only window occurrence that starts on `local_day`."""
    around = dt.datetime.combine(local_day, dt.time(12), tzinfo=UTC)
    spans = [s for s in window_spans(sched, around - 2 * WEEK, around + 2 * WEEK) if s.local_date == local_day]
    assert len(spans) == 1, spans
    return spans[0].opens, spans[0].closes


def is_open(sched: Schedule, now: dt.datetime) -> bool:
    return bool(open_spans(sched, now))


# --- windows at fixed instants ---------------------------------------------------------------------------

BERLIN_OFFICE = schedule("Europe/Berlin", window("08:00", "18:00", WEEKDAYS))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(utc(2026, 6, 10, 5, 59, 59), False, id="wed-07:59:59-cest-closed"),
        pytest.param(utc(2026, 6, 10, 6, 0), True, id="wed-08:00-cest-opening-inclusive"),
        pytest.param(utc(2026, 6, 10, 12, 0), True, id="wed-14:00-cest-open"),
        pytest.param(utc(2026, 6, 10, 15, 59, 59), True, id="wed-17:59:59-cest-open"),
        pytest.param(utc(2026, 6, 10, 16, 0), False, id="wed-18:00-cest-closing-exclusive"),
        pytest.param(utc(2026, 1, 14, 6, 30), False, id="wed-07:30-cet-winter-closed"),
        pytest.param(utc(2026, 1, 14, 7, 0), True, id="wed-08:00-cet-winter-open"),
        pytest.param(utc(2026, 6, 13, 10, 0), False, id="saturday-closed"),
        pytest.param(utc(2026, 6, 14, 10, 0), False, id="sunday-closed"),
    ],
)
def test_office_hours_open_at_fixed_instants(now: dt.datetime, expected: bool) -> None:
    assert is_open(BERLIN_OFFICE, now) is expected


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        open_spans(BERLIN_OFFICE, dt.datetime(2026, 6, 10, 12, 0))


# --- DST: a day window opens at the right UTC instant on both sides of each change -----------------------


@pytest.mark.parametrize(
    ("timezone", "local_day", "opens", "closes"),
    [
        # Europe/Berlin springs forward on 2026-03-29 (CET +01 → CEST +02).
        pytest.param(
            "Europe/Berlin", dt.date(2026, 3, 27), utc(2026, 3, 27, 7), utc(2026, 3, 27, 17), id="ber-fri-cet"
        ),
        pytest.param(
            "Europe/Berlin", dt.date(2026, 3, 28), utc(2026, 3, 28, 7), utc(2026, 3, 28, 17), id="ber-sat-cet"
        ),
        pytest.param(
            "Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 29, 6), utc(2026, 3, 29, 16), id="ber-change-day-cest"
        ),
        pytest.param(
            "Europe/Berlin", dt.date(2026, 3, 30), utc(2026, 3, 30, 6), utc(2026, 3, 30, 16), id="ber-mon-cest"
        ),
        # Europe/Berlin falls back on 2026-10-25 (CEST → CET).
        pytest.param("Europe/Berlin", dt.date(2026, 10, 24), utc(2026, 10, 24, 6), utc(2026, 10, 24, 16), id="ber-sat"),
        pytest.param(
            "Europe/Berlin", dt.date(2026, 10, 25), utc(2026, 10, 25, 7), utc(2026, 10, 25, 17), id="ber-fallback-day"
        ),
        pytest.param("Europe/Berlin", dt.date(2026, 10, 26), utc(2026, 10, 26, 7), utc(2026, 10, 26, 17), id="ber-mon"),
        # America/New_York springs forward on 2026-03-08 (EST -05 → EDT -04).
        pytest.param(
            "America/New_York", dt.date(2026, 3, 7), utc(2026, 3, 7, 13), utc(2026, 3, 7, 23), id="nyc-sat-est"
        ),
        pytest.param(
            "America/New_York", dt.date(2026, 3, 8), utc(2026, 3, 8, 12), utc(2026, 3, 8, 22), id="nyc-change-day-edt"
        ),
        pytest.param(
            "America/New_York", dt.date(2026, 3, 9), utc(2026, 3, 9, 12), utc(2026, 3, 9, 22), id="nyc-mon-edt"
        ),
        # America/New_York falls back on 2026-11-01 (EDT → EST).
        pytest.param(
            "America/New_York", dt.date(2026, 10, 31), utc(2026, 10, 31, 12), utc(2026, 10, 31, 22), id="nyc-sat-edt"
        ),
        pytest.param(
            "America/New_York", dt.date(2026, 11, 1), utc(2026, 11, 1, 13), utc(2026, 11, 1, 23), id="nyc-fallback-day"
        ),
        pytest.param(
            "America/New_York", dt.date(2026, 11, 2), utc(2026, 11, 2, 13), utc(2026, 11, 2, 23), id="nyc-mon"
        ),
    ],
)
def test_day_window_around_dst(timezone: str, local_day: dt.date, opens: dt.datetime, closes: dt.datetime) -> None:
    sched = schedule(timezone, window("08:00", "18:00"))
    assert span_on(sched, local_day) == (opens, closes)
    assert not is_open(sched, opens - dt.timedelta(seconds=1))
    assert is_open(sched, opens)
    assert not is_open(sched, closes)


@pytest.mark.parametrize(
    ("timezone", "local_day", "opens", "hours"),
    [
        # 22:00 CET (21:00 UTC) to 06:00 CEST (04:00 UTC): the night loses an hour.
        pytest.param("Europe/Berlin", dt.date(2026, 3, 28), utc(2026, 3, 28, 21), 7, id="berlin-spring-forward-7h"),
        # 22:00 CEST (20:00 UTC) to 06:00 CET (05:00 UTC): the night gains an hour.
        pytest.param("Europe/Berlin", dt.date(2026, 10, 24), utc(2026, 10, 24, 20), 9, id="berlin-fall-back-9h"),
        pytest.param("Europe/Berlin", dt.date(2026, 3, 21), utc(2026, 3, 21, 21), 8, id="berlin-ordinary-night-8h"),
        # 22:00 EST (03:00 UTC next day) to 06:00 EDT (10:00 UTC).
        pytest.param("America/New_York", dt.date(2026, 3, 7), utc(2026, 3, 8, 3), 7, id="new-york-spring-forward-7h"),
        # 22:00 EDT (02:00 UTC next day) to 06:00 EST (11:00 UTC).
        pytest.param("America/New_York", dt.date(2026, 10, 31), utc(2026, 11, 1, 2), 9, id="new-york-fall-back-9h"),
    ],
)
def test_cross_midnight_window_over_dst_night(
    timezone: str, local_day: dt.date, opens: dt.datetime, hours: int
) -> None:
    sched = schedule(timezone, window("22:00", "06:00"))
    span_opens, span_closes = span_on(sched, local_day)
    assert span_opens == opens
    assert span_closes - span_opens == dt.timedelta(hours=hours)
    assert is_open(sched, span_closes - dt.timedelta(seconds=1))
    # The next night's occurrence opens 16 local hours later, so the morning is closed.
    assert not is_open(sched, span_closes)


@pytest.mark.parametrize(
    ("timezone", "local_day", "opens", "jump"),
    [
        # 02:30 does not exist in Berlin on 2026-03-29: clocks go 02:00 CET → 03:00 CEST at 01:00 UTC.
        # 02:30 is read with the offset in force before the change (+01), i.e. 03:30 CEST = 01:30 UTC.
        pytest.param("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1), id="berlin"),
        # 02:30 does not exist in New York on 2026-03-08: 02:00 EST → 03:00 EDT at 07:00 UTC.
        pytest.param(
            "America/New_York", dt.date(2026, 3, 8), utc(2026, 3, 8, 7, 30), utc(2026, 3, 8, 7), id="new-york"
        ),
    ],
)
def test_window_starting_in_spring_forward_gap(
    timezone: str, local_day: dt.date, opens: dt.datetime, jump: dt.datetime
) -> None:
    sched = schedule(timezone, window("02:30", "06:00"))
    span_opens, span_closes = span_on(sched, local_day)
    assert span_opens == opens
    assert span_opens.astimezone(sched.zone).strftime("%H:%M") == "03:30"
    assert not is_open(sched, jump - dt.timedelta(seconds=1))
    assert is_open(sched, opens)
    # 03:30 to 06:00 local, all in summer time.
    assert span_closes - span_opens == dt.timedelta(hours=2, minutes=30)


def test_window_starting_in_fall_back_repeat_opens_on_first_occurrence() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25: first at 00:30 UTC (CEST), again at 01:30 UTC (CET).
    sched = schedule("Europe/Berlin", window("02:30", "06:00"))
    opens, closes = span_on(sched, dt.date(2026, 10, 25))
    assert opens == utc(2026, 10, 25, 0, 30)
    assert closes == utc(2026, 10, 25, 5)  # 06:00 CET
    assert closes - opens == dt.timedelta(hours=4, minutes=30)


@pytest.mark.parametrize(
    "local_day",
    [
        pytest.param(dt.date(2026, 1, 15), id="january-southern-summer"),
        pytest.param(dt.date(2026, 2, 20), id="february-old-dst-end"),
        pytest.param(dt.date(2026, 7, 15), id="july-southern-winter"),
        pytest.param(dt.date(2026, 10, 20), id="october-old-dst-start"),
        pytest.param(dt.date(2026, 11, 5), id="november"),
        pytest.param(dt.date(2026, 12, 24), id="december"),
    ],
)
def test_sao_paulo_has_no_dst(local_day: dt.date) -> None:
    # Brazil abolished DST in 2019: São Paulo is -03:00 all year, so 08:00 is always 11:00 UTC.
    sched = schedule("America/Sao_Paulo", window("08:00", "18:00"))
    opens, closes = span_on(sched, local_day)
    assert opens == dt.datetime.combine(local_day, dt.time(11), tzinfo=UTC)
    assert closes == dt.datetime.combine(local_day, dt.time(21), tzinfo=UTC)
    for moment in (opens, closes):
        assert moment.astimezone(sched.zone).utcoffset() == dt.timedelta(hours=-3)


# --- windows ending at 24:00 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "local_day", "opens", "closes"),
    [
        pytest.param("UTC", dt.date(2026, 6, 10), utc(2026, 6, 10, 18), utc(2026, 6, 11, 0), id="utc"),
        pytest.param("Europe/Berlin", dt.date(2026, 6, 10), utc(2026, 6, 10, 16), utc(2026, 6, 10, 22), id="berlin"),
        # Fall-back day: 18:00 CET to 24:00 CET, still six hours.
        pytest.param(
            "Europe/Berlin", dt.date(2026, 10, 25), utc(2026, 10, 25, 17), utc(2026, 10, 25, 23), id="ber-dst"
        ),
    ],
)
def test_window_ending_at_midnight(timezone: str, local_day: dt.date, opens: dt.datetime, closes: dt.datetime) -> None:
    sched = schedule(timezone, window("18:00", "24:00"))
    assert span_on(sched, local_day) == (opens, closes)
    assert is_open(sched, closes - dt.timedelta(seconds=1))
    assert not is_open(sched, closes)


def test_friday_evening_until_midnight_does_not_open_on_saturday() -> None:
    sched = schedule("Europe/Berlin", window("20:00", "24:00", ["fri"]))
    assert is_open(sched, utc(2026, 6, 12, 21, 59, 59))  # Fri 23:59:59 CEST
    assert not is_open(sched, utc(2026, 6, 12, 22))  # Sat 00:00 CEST
    assert not is_open(sched, utc(2026, 6, 13, 19))  # Sat 21:00 CEST


def test_whole_day_window_00_to_24() -> None:
    # "24:00 is midnight" and length_minutes allows 1440, so 00:00-24:00 reads as the whole day. The CRD's
    # rule (start != end) admits it as well; the model must not reject what the API server accepts.
    Window.model_validate({"days": ["sat"], "start": "00:00", "end": "24:00"})
    sched = schedule("Europe/Berlin", window("00:00", "24:00", ["sat"]))
    assert span_on(sched, dt.date(2026, 6, 13)) == (utc(2026, 6, 12, 22), utc(2026, 6, 13, 22))


def test_equal_start_and_end_is_refused() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        Window.model_validate({"days": ["mon"], "start": "08:00", "end": "08:00"})


# --- cross-midnight windows belong to the day they start ---------------------------------------------------

FRIDAY_NIGHT = schedule("Europe/Berlin", window("22:00", "06:00", ["fri"]))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(utc(2026, 6, 12, 19, 59), False, id="fri-21:59-closed"),
        pytest.param(utc(2026, 6, 12, 20, 0), True, id="fri-22:00-open"),
        pytest.param(utc(2026, 6, 13, 0, 0), True, id="sat-02:00-still-friday-night"),
        pytest.param(utc(2026, 6, 13, 3, 59, 59), True, id="sat-05:59:59-open"),
        pytest.param(utc(2026, 6, 13, 4, 0), False, id="sat-06:00-closed"),
        pytest.param(utc(2026, 6, 13, 21, 0), False, id="sat-23:00-no-saturday-night"),
        pytest.param(utc(2026, 6, 12, 0, 0), False, id="fri-02:00-thursday-night-not-listed"),
    ],
)
def test_friday_night_window(now: dt.datetime, expected: bool) -> None:
    assert is_open(FRIDAY_NIGHT, now) is expected


def test_friday_night_span_is_dated_friday() -> None:
    (span,) = open_spans(FRIDAY_NIGHT, utc(2026, 6, 13, 1))
    assert span.local_date == dt.date(2026, 6, 12)


@pytest.mark.parametrize(
    ("holiday", "expected"),
    [
        pytest.param("2026-06-12", False, id="friday-holiday-closes-the-night"),
        pytest.param("2026-06-13", True, id="saturday-holiday-does-not"),
    ],
)
def test_cross_midnight_window_follows_start_day_holiday(holiday: str, expected: bool) -> None:
    sched = schedule("Europe/Berlin", window("22:00", "06:00", ["fri"]), dates=[holiday])
    assert is_open(sched, utc(2026, 6, 13, 1)) is expected  # Sat 03:00 CEST


# --- holidays --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "dates", "calendars", "now", "expected"),
    [
        pytest.param("Europe/Berlin", ["2026-12-24"], [], utc(2026, 12, 24, 10), False, id="explicit-date-closes"),
        pytest.param("Europe/Berlin", ["2026-12-24"], [], utc(2026, 12, 23, 10), True, id="explicit-date-day-before"),
        pytest.param(
            "Europe/Berlin",
            [],
            [{"country": "DE", "subdivision": "BY"}],
            utc(2026, 1, 6, 10),
            False,
            id="epiphany-bavaria-closed",
        ),
        pytest.param(
            "Europe/Berlin",
            [],
            [{"country": "DE", "subdivision": "BE"}],
            utc(2026, 1, 6, 10),
            True,
            id="epiphany-berlin-open",
        ),
        pytest.param("Europe/Berlin", [], [{"country": "DE"}], utc(2026, 1, 6, 10), True, id="epiphany-federal-open"),
        pytest.param(
            "Europe/Berlin", [], [{"country": "DE", "subdivision": "BY"}], utc(2026, 1, 7, 10), True, id="bavaria-jan-7"
        ),
        pytest.param(
            "America/New_York", [], [{"country": "US"}], utc(2026, 11, 26, 15), False, id="thanksgiving-closed"
        ),
        pytest.param(
            "America/New_York", [], [{"country": "US"}], utc(2026, 11, 27, 15), True, id="day-after-thanksgiving"
        ),
        pytest.param(
            "America/New_York",
            ["2026-11-27"],
            [{"country": "US"}],
            utc(2026, 11, 27, 15),
            False,
            id="explicit-and-calendar-together",
        ),
    ],
)
def test_holidays_close_windows(
    timezone: str, dates: list[str], calendars: list[dict[str, str]], now: dt.datetime, expected: bool
) -> None:
    sched = schedule(timezone, window("08:00", "18:00", WEEKDAYS), dates=dates, calendars=calendars)
    assert is_open(sched, now) is expected
    # The occurrence still exists when holidays are ignored: only the holiday closed it.
    assert open_spans(sched, now, include_holidays=True)


def test_holiday_date_is_local_not_utc() -> None:
    # 2026-12-24 00:30 in Berlin is still 2026-12-23 in UTC: the local date decides.
    sched = schedule("Europe/Berlin", window("00:00", "06:00"), dates=["2026-12-24"])
    assert not is_open(sched, utc(2026, 12, 23, 23, 30))
    assert is_open(sched, utc(2026, 12, 22, 23, 30))  # 00:30 on the 23rd


BERLIN_BY = [{"country": "DE", "subdivision": "BY"}]
BERLIN_BE = [{"country": "DE", "subdivision": "BE"}]


@pytest.mark.parametrize(
    ("timezone", "dates", "calendars", "now", "expected"),
    [
        pytest.param("Europe/Berlin", [], [], utc(2026, 6, 10, 6), utc(2026, 6, 11, 6), id="strictly-after-opening"),
        pytest.param("Europe/Berlin", [], [], utc(2026, 6, 12, 17), utc(2026, 6, 15, 6), id="friday-evening-to-monday"),
        pytest.param("Europe/Berlin", [], [], utc(2026, 6, 13, 12), utc(2026, 6, 15, 6), id="saturday-to-monday"),
        pytest.param(
            "Europe/Berlin", [], BERLIN_BY, utc(2026, 1, 5, 18), utc(2026, 1, 7, 7), id="monday-skips-epiphany-in-by"
        ),
        pytest.param(
            "Europe/Berlin", [], BERLIN_BE, utc(2026, 1, 5, 18), utc(2026, 1, 6, 7), id="monday-to-tuesday-in-be"
        ),
        # Thu 2026-12-24 (explicit) and Fri 2026-12-25 (Christmas) closed, then the weekend.
        pytest.param(
            "Europe/Berlin",
            ["2026-12-24"],
            BERLIN_BE,
            utc(2026, 12, 23, 18),
            utc(2026, 12, 28, 7),
            id="christmas-and-weekend",
        ),
        pytest.param(
            "America/New_York",
            [],
            [{"country": "US"}],
            utc(2026, 11, 25, 23),
            utc(2026, 11, 27, 13),
            id="skips-thanksgiving",
        ),
        # Friday before the spring-forward weekend (EST) to Monday after it (EDT).
        pytest.param("America/New_York", [], [], utc(2026, 3, 6, 23), utc(2026, 3, 9, 12), id="over-dst-weekend"),
    ],
)
def test_next_opening_skips_weekends_and_holidays(
    timezone: str, dates: list[str], calendars: list[dict[str, str]], now: dt.datetime, expected: dt.datetime
) -> None:
    sched = schedule(timezone, window("08:00", "18:00", WEEKDAYS), dates=dates, calendars=calendars)
    upcoming = next_opening(sched, now, WEEK)
    assert upcoming is not None
    assert upcoming.opens == expected


def test_next_opening_beyond_horizon_is_none() -> None:
    assert next_opening(BERLIN_OFFICE, utc(2026, 6, 12, 17), dt.timedelta(hours=24)) is None


# --- overrides -------------------------------------------------------------------------------------------

KEEP_WARM_3 = {"mode": "keepWarm", "replicas": 3, "until": "2026-06-10T20:00:00+00:00"}
KEEP_WARM_5_LATER = {
    "mode": "keepWarm",
    "replicas": 5,
    "start": "2026-06-10T14:00:00+00:00",
    "until": "2026-06-10T20:00:00+00:00",
}
OFF = {"mode": "off", "until": "2026-06-10T20:00:00+00:00"}
OFF_LATER = {"mode": "off", "start": "2026-06-10T14:00:00+00:00", "until": "2026-06-10T20:00:00+00:00"}


@pytest.mark.parametrize(
    ("overrides", "now", "floor", "ceiling", "reason"),
    [
        pytest.param([], utc(2026, 6, 10, 21), 1, 8, Reason.POOL_MIN, id="none-closed"),
        pytest.param([], utc(2026, 6, 10, 10), 2, 8, Reason.WINDOW_OPEN, id="none-window-open"),
        pytest.param([KEEP_WARM_3], utc(2026, 6, 10, 19), 3, 8, Reason.OVERRIDE_KEEP_WARM, id="keepwarm-raises-floor"),
        pytest.param([KEEP_WARM_3], utc(2026, 6, 10, 10), 3, 8, Reason.OVERRIDE_KEEP_WARM, id="keepwarm-over-window"),
        pytest.param([KEEP_WARM_3], utc(2026, 6, 10, 20), 1, 8, Reason.POOL_MIN, id="keepwarm-until-exclusive"),
        pytest.param([OFF], utc(2026, 6, 10, 10), 0, 0, Reason.OVERRIDE_OFF, id="off-in-open-window"),
        pytest.param([OFF], utc(2026, 6, 10, 19), 0, 0, Reason.OVERRIDE_OFF, id="off-below-pool-min"),
        pytest.param([KEEP_WARM_3, OFF], utc(2026, 6, 10, 10), 0, 0, Reason.OVERRIDE_OFF, id="off-wins-over-keepwarm"),
        pytest.param([OFF, KEEP_WARM_3], utc(2026, 6, 10, 10), 0, 0, Reason.OVERRIDE_OFF, id="off-wins-either-order"),
        pytest.param([KEEP_WARM_5_LATER], utc(2026, 6, 10, 13, 59, 59), 2, 8, Reason.WINDOW_OPEN, id="future-keepwarm"),
        pytest.param([KEEP_WARM_5_LATER], utc(2026, 6, 10, 14), 5, 8, Reason.OVERRIDE_KEEP_WARM, id="keepwarm-starts"),
        pytest.param([OFF_LATER], utc(2026, 6, 10, 13, 59, 59), 2, 8, Reason.WINDOW_OPEN, id="future-off-not-yet"),
        pytest.param([OFF_LATER], utc(2026, 6, 10, 14), 0, 0, Reason.OVERRIDE_OFF, id="off-starts"),
        pytest.param(
            [KEEP_WARM_3, KEEP_WARM_5_LATER], utc(2026, 6, 10, 15), 5, 8, Reason.OVERRIDE_KEEP_WARM, id="most-replicas"
        ),
    ],
)
def test_overrides_in_schedule_limits(
    overrides: list[dict[str, Any]], now: dt.datetime, floor: int, ceiling: int, reason: Reason
) -> None:
    # Window 08:00-18:00 Berlin (06:00-16:00 UTC in June) with minimum 2; pool minimum 1.
    sched = schedule("Europe/Berlin", window("08:00", "18:00", min_replicas=2), overrides=overrides)
    limits = schedule_limits(pool(sched, min_replicas=1), now)
    assert (limits.floor, limits.ceiling, limits.floor_reason) == (floor, ceiling, reason)


def test_keep_warm_below_window_floor_does_not_lower_it() -> None:
    sched = schedule(
        "Europe/Berlin",
        window("08:00", "18:00", min_replicas=4),
        overrides=[{"mode": "keepWarm", "replicas": 2, "until": "2026-06-11T00:00:00+00:00"}],
    )
    limits = schedule_limits(pool(sched), utc(2026, 6, 10, 10))
    assert (limits.floor, limits.floor_reason) == (4, Reason.WINDOW_OPEN)


def test_keep_warm_is_capped_by_pool_max() -> None:
    sched = schedule("UTC", overrides=[{"mode": "keepWarm", "replicas": 12, "until": "2026-06-11T00:00:00+00:00"}])
    limits = schedule_limits(pool(sched, max_replicas=8), utc(2026, 6, 10, 10))
    assert (limits.floor, limits.ceiling) == (8, 8)


def test_active_override_compares_instants_across_offsets() -> None:
    # until 22:00+02:00 is 20:00 UTC.
    sched = schedule("UTC", overrides=[{"mode": "off", "until": "2026-06-10T22:00:00+02:00"}])
    assert active_override(sched, utc(2026, 6, 10, 19, 59, 59)) is not None
    assert active_override(sched, utc(2026, 6, 10, 20)) is None


# --- pre-warm --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "start", "cold_start", "opens"),
    [
        pytest.param("Europe/Berlin", "08:00", 180, utc(2026, 6, 10, 6), id="berlin-summer"),
        pytest.param("Europe/Berlin", "08:00", 600, utc(2026, 1, 14, 7), id="berlin-winter"),
        # Opens 03:00 CEST = 01:00 UTC, straight after the 02:00 → 03:00 jump; a one-hour cold start
        # begins at 00:00 UTC, which is 01:00 CET (two wall-clock hours earlier, one real hour).
        pytest.param("Europe/Berlin", "03:00", 3600, utc(2026, 3, 29, 1), id="berlin-after-spring-forward"),
        # Opens 03:00 CET = 02:00 UTC, an hour after the 03:00 → 02:00 fall-back; the two-hour cold start
        # begins at 00:00 UTC, which is 02:00 CEST (one wall-clock hour earlier, two real hours).
        pytest.param("Europe/Berlin", "03:00", 7200, utc(2026, 10, 25, 2), id="berlin-after-fall-back"),
        pytest.param("America/New_York", "03:00", 1800, utc(2026, 3, 8, 7), id="new-york-after-spring-forward"),
        pytest.param("America/New_York", "02:00", 3600, utc(2026, 11, 1, 7), id="new-york-after-fall-back"),
        pytest.param("America/Sao_Paulo", "08:00", 900, utc(2026, 7, 15, 11), id="sao-paulo"),
    ],
)
def test_prewarm_boundary(timezone: str, start: str, cold_start: int, opens: dt.datetime) -> None:
    sched = schedule(timezone, window(start, "12:00", min_replicas=3))
    spec = pool(sched, min_replicas=0, cold_start=cold_start)
    lead = dt.timedelta(seconds=cold_start)

    at_lead = schedule_limits(spec, opens - lead)
    assert (at_lead.floor, at_lead.floor_reason) == (3, Reason.PREWARM)
    just_before = schedule_limits(spec, opens - dt.timedelta(seconds=1))
    assert (just_before.floor, just_before.floor_reason) == (3, Reason.PREWARM)
    too_early = schedule_limits(spec, opens - lead - dt.timedelta(seconds=1))
    assert (too_early.floor, too_early.floor_reason) == (0, Reason.POOL_MIN)
    at_opening = schedule_limits(spec, opens)
    assert (at_opening.floor, at_opening.floor_reason) == (3, Reason.WINDOW_OPEN)


def test_no_prewarm_without_cold_start() -> None:
    spec = pool(schedule("UTC", window("08:00", "12:00", min_replicas=3)), cold_start=0)
    limits = schedule_limits(spec, utc(2026, 6, 10, 7, 59, 59))
    assert (limits.floor, limits.floor_reason) == (0, Reason.POOL_MIN)


def test_no_prewarm_ahead_of_holiday() -> None:
    sched = schedule("Europe/Berlin", window("08:00", "18:00", WEEKDAYS, min_replicas=2), calendars=BERLIN_BY)
    limits = schedule_limits(pool(sched, cold_start=600), utc(2026, 1, 6, 6, 55))  # Epiphany, 07:55 CET
    assert (limits.floor, limits.floor_reason) == (0, Reason.POOL_MIN)


def test_prewarm_for_back_to_back_window_with_higher_floor() -> None:
    # A quiet early window (1 replica) hands over at 09:00 to a busy one (4 replicas). The busy window's
    # replicas must be Ready at 09:00, so they start one cold start before, while the early one is open.
    sched = schedule("UTC", window("06:00", "09:00", min_replicas=1), window("09:00", "18:00", min_replicas=4))
    limits = schedule_limits(pool(sched, cold_start=300), utc(2026, 6, 10, 8, 56))
    assert (limits.floor, limits.floor_reason) == (4, Reason.PREWARM)


@pytest.mark.parametrize(
    ("calendars", "dates", "now", "floor", "reason"),
    [
        pytest.param(BERLIN_BY, [], utc(2026, 1, 6, 10), 1, Reason.HOLIDAY, id="epiphany-by-holiday"),
        pytest.param(BERLIN_BE, [], utc(2026, 1, 6, 10), 2, Reason.WINDOW_OPEN, id="epiphany-be-open"),
        pytest.param([], ["2026-06-10"], utc(2026, 6, 10, 10), 1, Reason.HOLIDAY, id="explicit-date"),
        pytest.param([], ["2026-06-10"], utc(2026, 6, 10, 20), 1, Reason.POOL_MIN, id="holiday-evening-not-holiday"),
    ],
)
def test_holiday_reason_in_schedule_limits(
    calendars: list[dict[str, str]], dates: list[str], now: dt.datetime, floor: int, reason: Reason
) -> None:
    sched = schedule(
        "Europe/Berlin", window("08:00", "18:00", WEEKDAYS, min_replicas=2), dates=dates, calendars=calendars
    )
    limits = schedule_limits(pool(sched, min_replicas=1), now)
    assert (limits.floor, limits.floor_reason) == (floor, reason)


@pytest.mark.parametrize(
    ("windows", "now", "floor", "ceiling", "ceiling_reason"),
    [
        pytest.param(
            [window("08:00", "18:00", max_replicas=3)], utc(2026, 6, 10, 10), 1, 3, Reason.WINDOW_MAX, id="cap"
        ),
        pytest.param([window("08:00", "18:00", max_replicas=3)], utc(2026, 6, 10, 20), 0, 8, Reason.POOL_MAX, id="off"),
        pytest.param(
            [window("08:00", "18:00", max_replicas=20)], utc(2026, 6, 10, 10), 1, 8, Reason.POOL_MAX, id="never-raise"
        ),
    ],
)
def test_window_ceiling(
    windows: list[dict[str, Any]], now: dt.datetime, floor: int, ceiling: int, ceiling_reason: Reason
) -> None:
    limits = schedule_limits(pool(schedule("UTC", *windows)), now)
    assert (limits.floor, limits.ceiling, limits.ceiling_reason) == (floor, ceiling, ceiling_reason)
