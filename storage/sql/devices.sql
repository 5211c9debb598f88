-- Per meter: when meterflow last heard it, how many readings it sent, the newest value of
-- every channel ("channel=value unit @ time", ordered by channel; times RFC 3339 in UTC), and the latest battery, signal, firmware and
-- error flags it reported (each the newest report that carried that field). The joined
-- subqueries are named: ClickHouse 24.3 and later refuse them unnamed (Code 206, ALIAS_REQUIRED).
SELECT
    meter_id, last_seen, seconds_since, readings, battery_pct, rssi_dbm, rsrp_dbm, firmware, error_flags, last_values
FROM (
    SELECT
        meter_id,
        concat(replaceOne(toString(max(last_received), 'UTC'), ' ', 'T'), 'Z') AS last_seen,
        -- 0 for a meter received "in the future" (a node's clock a little ahead of the
        -- server's): it was just heard, not missing.
        greatest(toInt64(toUInt32(now())) - toInt64(toUInt32(max(last_received))), 0) AS seconds_since,
        sum(n) AS readings,
        arrayStringConcat(arraySort(groupArray(concat(channel, '=', toString(last_value), ' ', unit, ' @ ',
            replaceOne(toString(last_ts, 'UTC'), ' ', 'T'), 'Z'))), '; ') AS last_values
    FROM (
        SELECT meter_id, channel, any(unit) AS unit, count() AS n, max(received_at) AS last_received,
            argMax(value, ts) AS last_value, max(ts) AS last_ts
        FROM {db}.readings FINAL
        WHERE 1 {meter_filter_where}
        GROUP BY meter_id, channel
    )
    GROUP BY meter_id
    HAVING seconds_since >= {stale_s}
) AS heard
ANY LEFT JOIN (
    SELECT
        meter_id,
        argMaxIf(battery_pct, at, isNotNull(battery_pct)) AS battery_pct,
        argMaxIf(rssi_dbm, at, isNotNull(rssi_dbm)) AS rssi_dbm,
        argMaxIf(rsrp_dbm, at, isNotNull(rsrp_dbm)) AS rsrp_dbm,
        argMaxIf(firmware, at, isNotNull(firmware)) AS firmware,
        argMaxIf(error_flags, at, isNotNull(error_flags)) AS error_flags
    FROM {db}.device_status
    WHERE 1 {meter_filter_where}
    GROUP BY meter_id
) AS status USING meter_id
ORDER BY meter_id
