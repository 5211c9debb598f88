-- Anomalies in [from, to), one row each: meter_id, channel, kind, at (UTC), detail.
--   reverse_run        a cumulative register fell (not to near zero: that is a reset)
--   register_reset     a register fell to below 1 % of its value: a reset or rollover
--   zero_consumption   an import register did not move for at least {zero_days} days
--   spike              a step (register increase, or interval value) above {spike_factor} x the
--                      meter's own median step on that channel (at least 8 steps), and > 0
--   missing_intervals  a gap of more than one interval in a 15-minute series (x.29.x)
--   error_flags        a status report with error flags set (device_status)
SELECT meter_id, channel, kind, at, detail FROM (
    SELECT meter_id, channel,
        if(tupleElement(d, 2) < tupleElement(d, 3) * 0.01, 'register_reset', 'reverse_run') AS kind,
        toString(tupleElement(d, 1), 'UTC') AS at,
        concat('fell from ', toString(tupleElement(d, 3)), ' to ', toString(tupleElement(d, 2))) AS detail
    FROM ({steps})
    ARRAY JOIN arrayFilter(x -> tupleElement(x, 2) < tupleElement(x, 3),
        arrayMap((t, v, p) -> (t, v, p), tss, vals, prevs)) AS d
    WHERE NOT is_interval

    UNION ALL

    SELECT meter_id, channel, 'zero_consumption' AS kind, toString(tss[1], 'UTC') AS at,
        concat('no change from ', toString(tss[1], 'UTC'), ' to ', toString(tss[length(tss)], 'UTC'),
               ' (', toString(vals[1]), ' ', unit, ')') AS detail
    FROM ({steps})
    WHERE match(channel, ':1\\.8\\.[0-9]+$')
        AND readings >= 2
        AND arrayReduce('max', vals) = arrayReduce('min', vals)
        AND toUInt32(tss[length(tss)]) - toUInt32(tss[1]) >= {zero_days} * 86400

    UNION ALL

    SELECT meter_id, channel, 'spike' AS kind, toString(tupleElement(s, 1), 'UTC') AS at,
        concat('step ', toString(tupleElement(s, 2)), ' ', unit, ' against a median of ', toString(median_step)) AS detail
    FROM (
        SELECT meter_id, channel, unit,
            if(is_interval, vals, arrayMap((v, p) -> if(v >= p, v - p, 0), vals, prevs)) AS all_steps,
            arrayPopFront(arrayMap((t, x) -> (t, x), tss, all_steps)) AS steps,
            arrayReduce('quantileExact', arrayMap(x -> tupleElement(x, 2), steps)) AS median_step
        FROM ({steps})
    )
    ARRAY JOIN arrayFilter(x -> tupleElement(x, 2) > {spike_factor} * median_step AND tupleElement(x, 2) > 0, steps) AS s
    WHERE length(steps) >= 8 AND median_step > 0

    UNION ALL

    SELECT meter_id, channel, 'missing_intervals' AS kind, toString(tupleElement(g, 1), 'UTC') AS at,
        concat(toString(intDiv(tupleElement(g, 2), 900) - 1), ' quarter-hour value(s) missing after ', toString(tupleElement(g, 1), 'UTC')) AS detail
    FROM ({steps})
    ARRAY JOIN arrayFilter(x -> tupleElement(x, 2) > 900,
        arrayMap((t, p) -> (p, toUInt32(t) - toUInt32(p)), arrayPopFront(tss), arrayPopBack(tss))) AS g
    WHERE is_interval

    UNION ALL

    SELECT meter_id, '' AS channel, 'error_flags' AS kind, toString(t, 'UTC') AS at,
        concat('error flags ', toString(flags)) AS detail
    FROM (
        SELECT DISTINCT meter_id, at AS t, assumeNotNull(error_flags) AS flags
        FROM {db}.device_status
        WHERE at >= toDateTime({from}) AND at < toDateTime({to}) AND error_flags > 0 {meter_filter}
    )
)
ORDER BY meter_id, channel, at, kind
