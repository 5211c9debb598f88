-- The device state as ClickHouse remembers it, to rebuild meterflow's in-memory state when
-- its state file is gone or older (a new disk, a kill -9 between two saves). One stream,
-- ordered by meter: a row per meter and channel (kind 'r': the newest reading, counts, when
-- meterflow first and last accepted one) and a row per meter (kind 's': each status field's
-- newest value, '' where none). Only what was received in the last {days} days, whatever the
-- readings' own times (a backfill, a meter with a wrong clock): that reads `received_at` of
-- every partition, once, in the background at start-up. {meter_filter} narrows it to one
-- meter (the API's answer for a meter another node took). No FINAL: a redelivered reading changes
-- no newest value (`n` may count it twice). Every column is
-- text so the two halves line up on every server version. {ms}(x) is x in Unix milliseconds.
SELECT * FROM (
    SELECT
        meter_id,
        'r' AS kind,
        toString(channel) AS channel,
        toString(any(unit)) AS unit,
        toString(count()) AS n,
        toString({ms}(min(received_at))) AS first_ms,
        toString({ms}(max(received_at))) AS last_ms,
        toString({ms}(max(ts))) AS last_ts_ms,
        toString(argMax(value, ts)) AS last_value,
        toString(argMax(source, received_at)) AS source,
        toString(argMax(format, received_at)) AS format,
        '' AS battery_pct, '' AS rssi_dbm, '' AS rsrp_dbm, '' AS snr_db, '' AS firmware, '' AS error_flags
    FROM {db}.readings
    WHERE received_at >= now() - {days} * 86400 {meter_filter}
    GROUP BY meter_id, channel

    UNION ALL

    SELECT
        meter_id,
        's' AS kind,
        '' AS channel, '' AS unit, '' AS n, '' AS first_ms,
        toString({ms}(max(at))) AS last_ms,
        '' AS last_ts_ms, '' AS last_value, '' AS source, '' AS format,
        ifNull(toString(argMaxIf(battery_pct, at, isNotNull(battery_pct))), '') AS battery_pct,
        ifNull(toString(argMaxIf(rssi_dbm, at, isNotNull(rssi_dbm))), '') AS rssi_dbm,
        ifNull(toString(argMaxIf(rsrp_dbm, at, isNotNull(rsrp_dbm))), '') AS rsrp_dbm,
        ifNull(toString(argMaxIf(snr_db, at, isNotNull(snr_db))), '') AS snr_db,
        ifNull(toString(argMaxIf(firmware, at, isNotNull(firmware))), '') AS firmware,
        ifNull(toString(argMaxIf(error_flags, at, isNotNull(error_flags))), '') AS error_flags
    FROM {db}.device_status
    WHERE at >= now() - {days} * 86400 {meter_filter}
    GROUP BY meter_id
)
ORDER BY meter_id, kind
SETTINGS max_bytes_before_external_group_by = 1000000000, max_bytes_before_external_sort = 1000000000
