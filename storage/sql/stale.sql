-- Meters not heard for at least {stale_s} seconds (by the last time meterflow accepted a
-- reading from them), with that time.
SELECT meter_id, '' AS channel, 'stale' AS kind, toString(max(received_at), 'UTC') AS at,
    concat('not heard for ', toString(toUInt32(now()) - toUInt32(max(received_at))), ' s') AS detail
FROM {db}.readings
WHERE 1 {meter_filter_where}
GROUP BY meter_id
HAVING toUInt32(now()) - toUInt32(max(received_at)) >= {stale_s}
ORDER BY meter_id
