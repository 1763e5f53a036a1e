"""Time expressions in a query ("yesterday", "last week", "in May", "3 days ago", "in 2023") turned
into a UTC interval, so recall can prefer memories from that time. Rules only: no model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = ["TimeRange", "parse_time_range"]

_MONTHS = {
    "january": 1, "february": 2, "march": 3, "april": 4, "may": 5, "june": 6, "july": 7,
    "august": 8, "september": 9, "october": 10, "november": 11, "december": 12,
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9,
    "oct": 10, "nov": 11, "dec": 12,
}
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10, "couple of": 2, "few": 3}
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime
    end: datetime
    expression: str
    year_implied: bool = False  # "in May": the year was guessed and may be moved back

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def shifted_years(self, years: int) -> "TimeRange":
        return TimeRange(self.start.replace(year=self.start.year + years),
                         self.end.replace(year=self.end.year + years), self.expression, self.year_implied)


def _day(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def _month_range(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=timezone.utc)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


def parse_time_range(query: str, now: datetime) -> TimeRange | None:
    """The interval a query refers to, or None. ``now`` anchors relative expressions."""
    q = query.lower()
    now = now.astimezone(timezone.utc)
    today = _day(now)
    if m := re.search(r"\byesterday\b", q):
        return TimeRange(today - timedelta(days=1), today, m.group(0))
    if m := re.search(r"\btoday\b|\bthis morning\b|\bearlier today\b", q):
        return TimeRange(today, today + timedelta(days=1), m.group(0))
    if m := re.search(r"\b(last|past|previous|this)\s+(week|month|year)\b", q):
        which, unit = m.group(1), m.group(2)
        if unit == "week":
            week_start = today - timedelta(days=today.weekday())
            if which == "this":
                return TimeRange(week_start, week_start + timedelta(days=7), m.group(0))
            if which == "past":
                return TimeRange(now - timedelta(days=7), now, m.group(0))
            return TimeRange(week_start - timedelta(days=7), week_start, m.group(0))
        if unit == "month":
            if which == "this":
                s, e = _month_range(now.year, now.month)
            elif which == "past":
                return TimeRange(now - timedelta(days=30), now, m.group(0))
            else:
                y, mo = (now.year - 1, 12) if now.month == 1 else (now.year, now.month - 1)
                s, e = _month_range(y, mo)
            return TimeRange(s, e, m.group(0))
        year = now.year if which == "this" else now.year - 1
        if which == "past":
            return TimeRange(now - timedelta(days=365), now, m.group(0))
        return TimeRange(datetime(year, 1, 1, tzinfo=timezone.utc), datetime(year + 1, 1, 1, tzinfo=timezone.utc),
                         m.group(0))
    if m := re.search(rf"\b(\d+|{'|'.join(_NUMBERS)})\s+(day|week|month|year)s?\s+ago\b", q):
        n = int(m.group(1)) if m.group(1).isdigit() else _NUMBERS[m.group(1)]
        days = n * _UNIT_DAYS[m.group(2)]
        center = now - timedelta(days=days)
        slack = timedelta(days=max(1, days // 4))
        return TimeRange(_day(center) - slack, _day(center) + timedelta(days=1) + slack, m.group(0))
    if m := re.search(rf"\b(?:in|during|on|since|from|of)?\s*(?:early |late |mid-?)?({_MONTH_RE})\b\.?(?:\s+(\d{{4}}))?", q):
        month = _MONTHS[m.group(1)]
        if m.group(1) == "may" and not m.group(2) and not re.search(r"\b(in|during|of|since|from)\s+may\b", q):
            return None  # "may" is usually the verb
        if m.group(2):
            year = int(m.group(2))
        else:  # the most recent such month that has begun
            year = now.year if month <= now.month else now.year - 1
        s, e = _month_range(year, month)
        return TimeRange(s, e, m.group(0).strip(), year_implied=not m.group(2))
    if m := re.search(r"\b(?:in|during|of)\s+((?:19|20)\d{2})\b", q):
        year = int(m.group(1))
        return TimeRange(datetime(year, 1, 1, tzinfo=timezone.utc), datetime(year + 1, 1, 1, tzinfo=timezone.utc),
                         m.group(0))
    return None
