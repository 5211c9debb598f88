"""An independent computation of `meterflow query billing --tariff`, for tests/it/billing.rs.

Written from the rules in README.md ("Billing"), not from meterflow's code, with Python's own
time zones (zoneinfo), minute by minute where meterflow cuts a timeline:

  R(B): the reading at B (actual); else the straight line between the last reading before B
  and the first after it, when they are at most GAP apart and the second is not below the
  first (interpolated); else the last reading before B, or before the first reading the
  first one (carried).
  A step from a to b adds b - a when b >= a; else b when b < 1 % of a (a reset, counted);
  else nothing (a reverse run).
  Consumption: the steps of R(from), the readings strictly inside, R(to). Each step's
  consumption is spread evenly over its time and given to the tariff periods of each instant;
  the first step of a carried R(from) (the reading before from) is spread from that reading's
  time (its share before from by the periods of that time), all of it billed in the period.
  Max demand: each UTC quarter hour wholly inside [from, to): its share of the same evenly
  spread steps, x 4 (kWh), in the period of Q; the largest per period.

Usage: billing_reference.py READINGS.csv TARIFF.toml ZONE FROM_DATE TO_DATE GAP_SECONDS
READINGS.csv: meter_id,channel,ts,value,unit with ts in Unix milliseconds. Prints CSV:
meter_id,channel,period,consumption,max_demand_kw,start_value,start_read,end_value,end_read,resets,readings
"""

import bisect
import csv
import datetime as dt
import sys
import tomllib
from zoneinfo import ZoneInfo

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def main():
    readings_path, tariff_path, zone_name, from_date, to_date, gap_s = sys.argv[1:7]
    zone = ZoneInfo(zone_name)
    gap = int(gap_s) * 1000
    with open(tariff_path, "rb") as f:
        tariff = tomllib.load(f)
    holidays = {dt.date.fromisoformat(h) for h in tariff.get("holidays", [])}
    periods = tariff["period"]

    def local_midnight(text):
        d = dt.date.fromisoformat(text)
        return int(dt.datetime(d.year, d.month, d.day, tzinfo=zone).timestamp() * 1000)

    start, end = local_midnight(from_date), local_midnight(to_date)

    def minutes(text, default):
        if text is None:
            return default
        h, m = text.split(":")
        return int(h) * 60 + int(m)

    def period_of(ms):
        local = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).astimezone(zone)
        day = "holiday" if local.date() in holidays else DAYS[local.weekday()]
        minute = local.hour * 60 + local.minute
        for i, p in enumerate(periods):
            if day not in p.get("days", DAYS + ["holiday"]):
                continue
            if local.month not in p.get("months", list(range(1, 13))):
                continue
            lo, hi = minutes(p.get("from"), 0), minutes(p.get("to"), 1440) % 1440
            if p.get("from") is None or lo == hi:
                return i
            if (lo < hi and lo <= minute < hi) or (lo > hi and (minute >= lo or minute < hi)):
                return i
        raise SystemExit(f"no period at {local}")

    # The period of every UTC minute of the span (periods and offsets change on minutes).
    first_minute = start // 60000
    minute_period = [period_of(m * 60000) for m in range(first_minute, (end + 59999) // 60000 + 1)]

    series = {}
    with open(readings_path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["meter_id"], row["channel"])
            s = series.setdefault(key, {"unit": row["unit"], "points": {}})
            s["points"][int(row["ts"])] = float(row["value"])

    def r_at(ts, vs, b):
        i = bisect.bisect_left(ts, b)
        if i < len(ts) and ts[i] == b:
            return vs[i], "actual"
        before = i - 1 if i > 0 else None
        after = i if i < len(ts) else None
        if before is None:
            return vs[after], "carried"
        if after is None:
            return vs[before], "carried"
        if ts[after] - ts[before] <= gap and vs[after] >= vs[before]:
            share = (b - ts[before]) / (ts[after] - ts[before])
            return vs[before] + (vs[after] - vs[before]) * share, "interpolated"
        return vs[before], "carried"

    def adds(a, b):
        if b >= a:
            return b - a, 0
        if b < a * 0.01:
            return max(b, 0.0), 1
        return 0.0, 0

    def steps(ts, vs, lo, hi):
        """(t0, t1, consumption, resets) of the steps of R over [lo, hi]. The first step of a
        carried R(lo) (the reading before lo) was used since that reading: t0 is its time."""
        v0, k0 = r_at(ts, vs, lo)
        v1, _ = r_at(ts, vs, hi)
        i, j = bisect.bisect_right(ts, lo), bisect.bisect_left(ts, hi)
        before = bisect.bisect_left(ts, lo) - 1
        start_t = ts[before] if k0 == "carried" and before >= 0 else lo
        seq = [(start_t, v0)] + list(zip(ts[i:j], vs[i:j])) + [(hi, v1)]
        out = []
        for (t0, a), (t1, b) in zip(seq, seq[1:]):
            c, reset = adds(a, b)
            out.append((t0, t1, c, reset))
        return out

    def period_at_minute(m):
        if m >= first_minute:
            return minute_period[m - first_minute]
        return period_of(m * 60000)

    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["meter_id", "channel", "period", "consumption", "max_demand_kw",
                  "start_value", "start_read", "end_value", "end_read", "resets", "readings"])
    for (meter, channel), s in sorted(series.items()):
        ts = sorted(s["points"])
        vs = [s["points"][t] for t in ts]
        by_period = [0.0] * len(periods)
        first_quarter = -(-start // 900000)
        quarter_used = [0.0] * max(0, (end - first_quarter * 900000) // 900000)
        resets = 0
        for t0, t1, c, reset in steps(ts, vs, start, end):
            resets += reset
            if c == 0:
                continue
            m = t0 // 60000
            while m * 60000 < t1:
                lo, hi = max(t0, m * 60000), min(t1, (m + 1) * 60000)
                if hi > lo:
                    share = c * (hi - lo) / (t1 - t0)
                    by_period[period_at_minute(m)] += share
                    q = m // 15 - first_quarter
                    if 0 <= q < len(quarter_used):
                        quarter_used[q] += share
                m += 1
        demand = [None] * len(periods)
        if s["unit"] == "kWh":
            for i, used in enumerate(quarter_used):
                p = minute_period[(first_quarter + i) * 15 - first_minute]
                demand[p] = used * 4 if demand[p] is None else max(demand[p], used * 4)
        v0, k0 = r_at(ts, vs, start)
        v1, k1 = r_at(ts, vs, end)
        count = sum(1 for t in ts if start <= t < end)
        for i, p in enumerate(periods):
            out.writerow([meter, channel, p["name"], repr(by_period[i]),
                          "" if demand[i] is None else repr(demand[i]),
                          repr(v0), k0, repr(v1), k1, resets, count])


main()
