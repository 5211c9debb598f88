-- The shared inner query: every cumulative register (import 1.8.x, export 2.8.x, gas/water M-Bus
-- 24.2.x and DSMR 3 gas 24.3.0) or interval channel (x.29.0) of each meter inside [from, to),
-- deduplicated (FINAL), as arrays sorted by time: tss, vals and prevs (the value before each one).
-- {db} is the database; {meter_filter} is empty or "AND meter_id = '…'" (validated); {from}, {to} Unix seconds.
SELECT
    meter_id,
    channel,
    any(unit) AS unit,
    count() AS readings,
    arraySort(x -> tupleElement(x, 1), groupArray((ts, value))) AS points,
    arrayMap(x -> tupleElement(x, 1), points) AS tss,
    arrayMap(x -> tupleElement(x, 2), points) AS vals,
    arrayPopBack(arrayPushFront(vals, vals[1])) AS prevs,
    match(channel, ':[0-9]+\\.29\\.[0-9]+$') AS is_interval
FROM {db}.readings FINAL
WHERE ts >= toDateTime({from}) AND ts < toDateTime({to})
    AND match(channel, '^[0-9]+-[0-9]+:(([12]\\.8\\.[0-9]+)|(24\\.2\\.[0-9]+)|(24\\.3\\.0)|([0-9]+\\.29\\.[0-9]+))$')
    {meter_filter}
GROUP BY meter_id, channel
