-- Consumption per meter and register for [from, to): the sum of the increases between
-- consecutive readings of each cumulative register inside the period, which is last minus
-- first while the register only rises. A reading below 1 % of the one before is a reset or a
-- rollover: consumption counts on from zero. Any other fall is a reverse run: it adds nothing
-- (and `anomalies` reports it).
SELECT
    meter_id,
    channel,
    multiIf(
        match(channel, ':1\\.8\\.0$'), 'import total',
        match(channel, ':1\\.8\\.[0-9]+$'), concat('import tariff ', extract(channel, '[0-9]+$')),
        match(channel, ':2\\.8\\.0$'), 'export total',
        match(channel, ':2\\.8\\.[0-9]+$'), concat('export tariff ', extract(channel, '[0-9]+$')),
        match(channel, ':24\\.'), 'gas/water (M-Bus)',
        'other') AS register,
    unit,
    readings,
    toString(tss[1], 'UTC') AS first_ts,
    toString(tss[length(tss)], 'UTC') AS last_ts,
    vals[1] AS first_value,
    vals[length(vals)] AS last_value,
    round(arraySum(arrayMap((v, p) -> multiIf(v >= p, v - p, v < p * 0.01, v, 0), vals, prevs)), 6) AS consumption,
    arraySum(arrayMap((v, p) -> v < p * 0.01, vals, prevs)) AS resets
FROM ({steps})
WHERE NOT is_interval
ORDER BY meter_id, channel
