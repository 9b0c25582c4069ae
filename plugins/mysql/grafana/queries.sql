-- The SQL of every MySQL panel and variable of gateway.json, the same text as there; the
-- mysql plugin's tests/grafana.rs checks that they agree and runs each one against the real
-- server. Grafana replaces, before a query is sent:
--   $__unixEpochFrom(), $__unixEpochTo()  the time range's ends, in Unix seconds;
--   $__interval_ms                        the panel's bucket width, in milliseconds;
--   ${device:sqlstring} (and probe, gps_device)  the chosen values, quoted: 'pi-01','pi-02';
--   ${view}                               the view's name, asked for at import (readings_v).
-- sqlstring doubles quotes but leaves backslashes, which MySQL reads as escapes (unless the
-- server runs with NO_BACKSLASH_ESCAPES): a sensor name a device chose, such as
-- x\' ) OR (1=1 -- , would end the string and run its own SQL in every panel that lists the
-- probes. So the variables leave out every name with a backslash (CHAR(92)), and only their
-- values are ever put into a panel's SQL.
-- Time is filtered on time_us, which the indexes cover; the view's `time` column is only
-- selected, for the time axis, never filtered on (it is computed row by row). Time series are
-- bucketed by $__interval_ms on time_us, so every series has its points at the same instants
-- (Grafana would otherwise join them with gaps) and a long range gives no more points than the
-- panel is wide.

-- variable: device
SELECT device FROM (SELECT DISTINCT device FROM ${view}) AS devices
WHERE INSTR(device, CHAR(92)) = 0
ORDER BY device

-- variable: probe
SELECT DISTINCT sensor
FROM (SELECT DISTINCT device, sensor FROM ${view}
      WHERE device IN (${device:sqlstring}) AND name = 'temperature') AS probes
WHERE INSTR(sensor, CHAR(92)) = 0
ORDER BY sensor

-- variable: gps_device
SELECT device
FROM (SELECT DISTINCT device FROM ${view} WHERE sensor = 'gps' AND name = 'latitude') AS gps
WHERE INSTR(device, CHAR(92)) = 0
ORDER BY device

-- panel: Temperature per probe
SELECT TIMESTAMPADD(MICROSECOND, bucket * $__interval_ms * 1000, TIMESTAMP'1970-01-01 00:00:00') AS time,
       CONCAT(device, ' ', sensor) AS metric, temperature
FROM (SELECT time_us DIV ($__interval_ms * 1000) AS bucket, device, sensor,
             AVG(value) AS temperature
      FROM ${view}
      WHERE time_us BETWEEN $__unixEpochFrom() * 1000000 AND $__unixEpochTo() * 1000000 + 999999
        AND device IN (${device:sqlstring}) AND sensor IN (${probe:sqlstring})
        AND name = 'temperature'
      GROUP BY bucket, device, sensor) AS buckets
ORDER BY bucket, metric

-- panel: GPS track
SELECT time AS time, latitude, longitude
FROM (SELECT time_us, MIN(time) AS time,
             MAX(CASE WHEN name = 'latitude' THEN value END) AS latitude,
             MAX(CASE WHEN name = 'longitude' THEN value END) AS longitude
      FROM ${view}
      WHERE time_us BETWEEN $__unixEpochFrom() * 1000000 AND $__unixEpochTo() * 1000000 + 999999
        AND device = ${gps_device:sqlstring} AND sensor = 'gps'
        AND name IN ('latitude', 'longitude')
      GROUP BY time_us
      HAVING latitude IS NOT NULL AND longitude IS NOT NULL
      ORDER BY time_us DESC
      LIMIT 2000) AS track
ORDER BY time_us

-- panel: Readings per minute, per device
SELECT TIMESTAMPADD(MICROSECOND, bucket * $__interval_ms * 1000, TIMESTAMP'1970-01-01 00:00:00') AS time,
       device AS metric, readings
FROM (SELECT time_us DIV ($__interval_ms * 1000) AS bucket, device,
             COUNT(*) * 60000 / $__interval_ms AS readings
      FROM ${view}
      WHERE time_us BETWEEN $__unixEpochFrom() * 1000000 AND $__unixEpochTo() * 1000000 + 999999
        AND device IN (${device:sqlstring})
      GROUP BY bucket, device) AS buckets
ORDER BY bucket, device

-- panel: Last seen
SELECT device,
       TIMESTAMPADD(MICROSECOND, MAX(last_us), TIMESTAMP'1970-01-01 00:00:00') AS last_seen,
       CAST(UNIX_TIMESTAMP() AS SIGNED) - MAX(last_us) DIV 1000000 AS silent_for,
       COUNT(*) AS series
FROM (SELECT device, sensor, name, MAX(time_us) AS last_us
      FROM ${view}
      WHERE device IN (${device:sqlstring})
      GROUP BY device, sensor, name) AS latest
GROUP BY device
ORDER BY device
