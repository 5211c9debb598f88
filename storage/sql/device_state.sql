-- The device state as ClickHouse remembers it, to rebuild meterflow's in-memory state when
-- its state file is gone or older (a new disk, a kill -9 between two saves): per meter and
-- channel the newest reading, and when meterflow first and last accepted something of the
-- meter; status fields come from device_status (status_state.sql). Readings received in the
-- last {days} days only, so the scan stays bounded. {ms}(x) is x in Unix milliseconds.
SELECT
    meter_id,
    channel,
    any(unit) AS unit,
    count() AS n,
    {ms}(min(received_at)) AS first_ms,
    {ms}(max(received_at)) AS last_ms,
    {ms}(max(ts)) AS last_ts_ms,
    argMax(value, ts) AS last_value,
    toString(argMax(source, received_at)) AS source,
    toString(argMax(format, received_at)) AS format
FROM {db}.readings FINAL
WHERE received_at >= now() - {days} * 86400
GROUP BY meter_id, channel
ORDER BY meter_id, channel
