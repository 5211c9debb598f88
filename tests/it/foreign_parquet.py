"""Writes Parquet files of three readings the way other tools write them by default, for
tests/it/import_foreign.rs: pandas, pyarrow (every compression meterflow reads, every
timestamp unit, with and without a zone, dictionary-encoded strings, integer values),
polars and DuckDB; a file with its own column names (for --map); a file with a column of the
wrong type; a Brotli file (not read: its error must name the codec).

    python3 foreign_parquet.py OUT_DIR
"""
import sys
from datetime import datetime, timedelta, timezone

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

out = sys.argv[1]
start = datetime(2025, 6, 1, tzinfo=timezone.utc)
times = [start + timedelta(minutes=15 * k) for k in range(3)]
values = [1.5, 2.25, 3.0]
meters = ["E1", "E1", "E1"]
channels = ["1-0:1.8.0"] * 3
units = ["kWh"] * 3

# pandas, its defaults (pyarrow engine, Snappy, ns timestamps with the zone).
pd.DataFrame(
    {"meter_id": meters, "channel": channels, "ts": pd.to_datetime(times, utc=True), "value": values, "unit": units}
).to_parquet(f"{out}/pandas.parquet")

# pyarrow: each compression; each timestamp unit, with a zone and without (naive = UTC).
for compression in ["snappy", "gzip", "zstd", "lz4", "none"]:
    for unit in ["s", "ms", "us", "ns"]:
        for tz in [None, "Europe/Berlin"]:
            ts = pa.array([int(t.timestamp()) for t in times], pa.int64())
            ts = pa.compute.multiply(ts, {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000}[unit])
            table = pa.table(
                {
                    "meter_id": pa.array(meters).dictionary_encode(),
                    "channel": pa.array(channels, pa.large_string()),
                    "ts": ts.cast(pa.timestamp(unit, tz=tz)),
                    "value": pa.array(values, pa.float32()) if unit == "s" else pa.array(values),
                    "unit": units,
                }
            )
            pq.write_table(table, f"{out}/pyarrow-{compression}-{unit}-{(tz or 'naive').replace('/', '_')}.parquet", compression=compression)

# Integer values (Wh counted in whole units).
pq.write_table(
    pa.table({"meter_id": meters, "channel": channels, "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
              "value": pa.array([1500, 2250, 3000], pa.int64()), "unit": ["Wh"] * 3}),
    f"{out}/integers.parquet",
)

# polars (zstd, us timestamps), and DuckDB (Snappy, its TIMESTAMPTZ).
pl.DataFrame({"meter_id": meters, "channel": channels, "ts": times, "value": values, "unit": units}).write_parquet(
    f"{out}/polars.parquet"
)
con = duckdb.connect()
con.execute(
    "COPY (SELECT * FROM (VALUES ('E1', '1-0:1.8.0', TIMESTAMPTZ '2025-06-01 00:00:00+00', 1.5, 'kWh'), "
    "('E1', '1-0:1.8.0', TIMESTAMPTZ '2025-06-01 00:15:00+00', 2.25, 'kWh'), "
    "('E1', '1-0:1.8.0', TIMESTAMPTZ '2025-06-01 00:30:00+00', 3.0, 'kWh')) t(meter_id, channel, ts, value, unit)) "
    f"TO '{out}/duckdb.parquet' (FORMAT parquet)"
)

# Spark's defaults: Snappy, and timestamps as INT96 (spark.sql.parquet.outputTimestampType);
# written here by pyarrow the way Spark writes them (no JVM on the test machine).
pq.write_table(
    pa.table({"meter_id": meters, "channel": channels, "ts": pa.array(times, pa.timestamp("ns", tz="UTC")),
              "value": values, "unit": units}),
    f"{out}/spark-int96.parquet",
    compression="snappy",
    use_deprecated_int96_timestamps=True,
)

# Its own column names: EAN, Tijdstip (epoch seconds), Stand (decimal).
pq.write_table(
    pa.table({"EAN": pa.array([871687], pa.int64()).take([0, 0, 0]),
              "Tijdstip": pa.array([int(t.timestamp()) for t in times], pa.int64()),
              "Stand": pa.array(["1.50", "2.25", "3.00"]).cast(pa.decimal128(9, 2))}),
    f"{out}/mapped.parquet",
)

# A value column of timestamps: refused, naming it.
pq.write_table(
    pa.table({"meter_id": meters, "channel": channels, "ts": pa.array(times, pa.timestamp("ms", tz="UTC")),
              "value": pa.array(times, pa.timestamp("ms", tz="UTC")), "unit": units}),
    f"{out}/wrong.parquet",
)

pq.write_table(
    pa.table({"meter_id": meters, "channel": channels, "ts": pa.array(times, pa.timestamp("ms", tz="UTC")),
              "value": values, "unit": units}),
    f"{out}/brotli.parquet",
    compression="brotli",
)
