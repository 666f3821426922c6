"""Time units, defined once. Event times and windows are integer milliseconds since the epoch;
TTLs are seconds (as Redis takes them)."""

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS

HOUR_S = 3600
DAY_S = 24 * HOUR_S
