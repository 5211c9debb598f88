-- The newest value of every status field per meter (each from the newest report that
-- carried it, '' where none did), and when the newest report came; last {days} days.
SELECT
    meter_id,
    {ms}(max(at)) AS at_ms,
    ifNull(toString(argMaxIf(battery_pct, at, isNotNull(battery_pct))), '') AS battery_pct,
    ifNull(toString(argMaxIf(rssi_dbm, at, isNotNull(rssi_dbm))), '') AS rssi_dbm,
    ifNull(toString(argMaxIf(rsrp_dbm, at, isNotNull(rsrp_dbm))), '') AS rsrp_dbm,
    ifNull(toString(argMaxIf(snr_db, at, isNotNull(snr_db))), '') AS snr_db,
    ifNull(toString(argMaxIf(firmware, at, isNotNull(firmware))), '') AS firmware,
    ifNull(toString(argMaxIf(error_flags, at, isNotNull(error_flags))), '') AS error_flags
FROM {db}.device_status
WHERE at >= now() - {days} * 86400
GROUP BY meter_id
