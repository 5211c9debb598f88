#!/usr/bin/env python3
"""The billing benchmark's reference (benches/billing/run.sh): DuckDB computes, over the same
Parquet files meterflow reads, each meter's and register's total consumption for [FROM, TO)
with meterflow's boundary rule, and writes it as CSV (meter_id,channel,consumption).

    duckdb_total.py DATA_DIR FROM_MS TO_MS OUT.csv [THREADS]

The rule (billing/src/register.rs, README "Billing"), written here independently:
- R(B): the reading at B (actual); else the line between the last reading before B and the
  first after it when both exist, are at most 7 days apart and the register did not fall
  between them (interpolated); else the reading before, carried forward, or before the first
  reading the first one (carried);
- consumption: the steps from R(FROM) through the readings strictly inside (FROM, TO) to
  R(TO); a rise adds the difference, a fall below 1 % of the value before counts the new
  value (a reset), any other fall adds 0.

Cumulative registers only (1.8.x, 2.8.x, 24.2.x, 24.3.0). Not applied: the read model's
choice between copies of one reading (the benchmark's data has none) and rollover maxima
(none configured).
"""

import sys

import duckdb

GAP_MS = 7 * 86_400_000


def step(a, b):
    return (
        f"(CASE WHEN {b} >= {a} THEN {b} - {a} "
        f"WHEN {b} < {a} * 0.01 THEN greatest({b}, 0.0) ELSE 0.0 END)"
    )


def edge(name, at):
    """R(at) from the columns of the row first at or after `at` (t, v, prev_t, prev_v)."""
    interpolated = f"prev_v + (v - prev_v) * (({at} - prev_t)::DOUBLE / (t - prev_t)::DOUBLE)"
    return f"""
      arg_min(CASE
          WHEN t = {at} THEN v
          WHEN prev_t IS NULL THEN v
          WHEN t - prev_t <= {GAP_MS} AND v >= prev_v THEN {interpolated}
          ELSE prev_v END, t) FILTER (WHERE t >= {at}) AS {name}_next"""


def main():
    data_dir, from_ms, to_ms, out = sys.argv[1:5]
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else None
    f, t_ = int(from_ms), int(to_ms)
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    files = f"{data_dir}/readings/date=*/*.parquet"
    sql = f"""
    WITH r AS (
      SELECT meter_id, channel, epoch_ms(ts) AS t, value AS v
      FROM read_parquet('{files}', hive_partitioning = true)
      WHERE regexp_full_match(channel, '[0-9]+-[0-9]+:(([12]\\.8\\.[0-9]+)|(24\\.2\\.[0-9]+)|(24\\.3\\.0))')
    ),
    w AS (
      SELECT meter_id, channel, t, v,
        lag(t) OVER s AS prev_t, lag(v) OVER s AS prev_v
      FROM r
      WINDOW s AS (PARTITION BY meter_id, channel ORDER BY t)
    ),
    g AS (
      SELECT meter_id, channel,
        {edge('rf', f)},
        {edge('rt', t_)},
        arg_max(v, t) AS last_v,
        count(*) FILTER (WHERE t > {f} AND t < {t_}) AS inner_n,
        arg_min(v, t) FILTER (WHERE t > {f} AND t < {t_}) AS first_inner,
        arg_max(v, t) FILTER (WHERE t > {f} AND t < {t_}) AS last_inner,
        coalesce(sum({step('prev_v', 'v')}) FILTER (WHERE t < {t_} AND prev_t > {f}), 0.0)
          AS inner_sum
      FROM w
      GROUP BY meter_id, channel
    ),
    e AS (
      SELECT *, coalesce(rf_next, last_v) AS rf, coalesce(rt_next, last_v) AS rt FROM g
    )
    SELECT meter_id, channel,
      CASE WHEN inner_n = 0 THEN {step('rf', 'rt')}
        ELSE {step('rf', 'first_inner')} + inner_sum + {step('last_inner', 'rt')} END
        AS consumption
    FROM e
    ORDER BY meter_id, channel
    """
    con.execute(f"COPY ({sql}) TO '{out}' (HEADER, DELIMITER ',')")


if __name__ == "__main__":
    main()
