"""The GPUPool API's names and the wire model every part of the spec is built on."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

__all__ = ["API_GROUP", "API_VERSION", "KIND", "PLURAL", "Weekday", "parse_clock"]

API_GROUP = "ebbtide.dev"
API_VERSION = "v1alpha1"
KIND = "GPUPool"
PLURAL = "gpupools"

_CLOCK = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$|^24:00$")
_DNS1123 = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


@lru_cache(maxsize=4096)
def parse_clock(text: str) -> int:
    """Minutes after local midnight for an "HH:MM" wall-clock time ("24:00" is 1440, the end of the day)."""
    if not _CLOCK.match(text):
        raise ValueError(f"{text!r} is not a time of day in 24-hour HH:MM form (00:00 to 24:00)")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


class _Model(BaseModel):
    """Strict wire model: camelCase aliases, unknown fields rejected, values frozen once validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class Weekday(StrEnum):
    """Day of the week, as written in a window (`mon` … `sun`)."""

    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"

    @property
    def number(self) -> int:
        """Monday is 0, as in `datetime.weekday()`."""
        return _WEEKDAY_NUMBERS[self]


_WEEKDAY_NUMBERS = {day: number for number, day in enumerate(Weekday)}
