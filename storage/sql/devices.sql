-- Per meter: when meterflow last heard it, how many readings it sent, and the newest value
-- of every channel ("channel=value unit @ time").
SELECT
    meter_id,
    toString(max(last_received), 'UTC') AS last_seen,
    toUInt32(now()) - toUInt32(max(last_received)) AS seconds_since,
    sum(n) AS readings,
    arrayStringConcat(groupArray(concat(channel, '=', toString(last_value), ' ', unit, ' @ ', toString(last_ts, 'UTC'))), '; ') AS last_values
FROM (
    SELECT meter_id, channel, any(unit) AS unit, count() AS n, max(received_at) AS last_received,
        argMax(value, ts) AS last_value, max(ts) AS last_ts
    FROM {db}.readings FINAL
    WHERE 1 {meter_filter_where}
    GROUP BY meter_id, channel
)
GROUP BY meter_id
HAVING seconds_since >= {stale_s}
ORDER BY meter_id
