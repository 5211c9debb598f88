//! What a channel is, in words, for people: the OBIS codes meters use most (IEC 62056-61,
//! as DSMR, IDIS and the DLMS decoder name them) and the LwM2M resources meterflow maps.
//! Channels are stored as the meter named them; this only labels them on the page and in
//! the device API.

/// `C.D.E` of an OBIS code (the medium and channel `A-B:` and a trailing `.F` left out), and
/// its name.
const OBIS: &[(&str, &str)] = &[
    ("1.8.0", "energy imported, total"),
    ("1.8.1", "energy imported, tariff 1"),
    ("1.8.2", "energy imported, tariff 2"),
    ("1.8.3", "energy imported, tariff 3"),
    ("1.8.4", "energy imported, tariff 4"),
    ("2.8.0", "energy exported, total"),
    ("2.8.1", "energy exported, tariff 1"),
    ("2.8.2", "energy exported, tariff 2"),
    ("2.8.3", "energy exported, tariff 3"),
    ("2.8.4", "energy exported, tariff 4"),
    ("3.8.0", "reactive energy imported"),
    ("4.8.0", "reactive energy exported"),
    ("1.7.0", "power imported"),
    ("2.7.0", "power exported"),
    ("1.6.0", "peak demand this month"),
    ("21.7.0", "power imported, L1"),
    ("41.7.0", "power imported, L2"),
    ("61.7.0", "power imported, L3"),
    ("22.7.0", "power exported, L1"),
    ("42.7.0", "power exported, L2"),
    ("62.7.0", "power exported, L3"),
    ("31.7.0", "current, L1"),
    ("51.7.0", "current, L2"),
    ("71.7.0", "current, L3"),
    ("32.7.0", "voltage, L1"),
    ("52.7.0", "voltage, L2"),
    ("72.7.0", "voltage, L3"),
    ("32.32.0", "voltage sags, L1"),
    ("52.32.0", "voltage sags, L2"),
    ("72.32.0", "voltage sags, L3"),
    ("32.36.0", "voltage swells, L1"),
    ("52.36.0", "voltage swells, L2"),
    ("72.36.0", "voltage swells, L3"),
    ("13.7.0", "power factor"),
    ("14.7.0", "frequency"),
    ("96.14.0", "tariff in use"),
    ("96.7.21", "power failures"),
    ("96.7.9", "long power failures"),
    ("96.3.10", "breaker position"),
    ("17.0.0", "power limit"),
    ("24.2.1", "volume (M-Bus device)"),
    ("24.2.3", "volume (M-Bus device)"),
    ("24.3.0", "gas volume"),
    ("24.4.0", "valve position"),
];

/// The LwM2M resources the SenML/LwM2M decoder keeps as readings.
const LWM2M: &[(&str, &str)] = &[
    ("/3/0/9", "battery level"),
    ("/3/0/7", "supply voltage"),
    ("/4/0/2", "signal strength"),
    ("/3303/0/5700", "temperature"),
    ("/3304/0/5700", "humidity"),
    ("/3305/0/5700", "power"),
    ("/3331/0/5805", "energy"),
];

/// The name of `channel`, if it is one of the known OBIS codes or LwM2M resources.
pub fn channel_name(channel: &str) -> Option<&'static str> {
    if channel.starts_with('/') {
        return LWM2M.iter().find(|(p, _)| *p == channel).map(|(_, n)| *n);
    }
    let code = channel.rsplit_once(':').map_or(channel, |(_, c)| c);
    let mut parts = code.splitn(4, '.');
    let (c, d, e) = (parts.next()?, parts.next()?, parts.next()?);
    let key = format!("{c}.{d}.{e}");
    OBIS.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obis_codes_and_lwm2m_paths_have_names() {
        assert_eq!(channel_name("1-0:1.8.0"), Some("energy imported, total"));
        assert_eq!(channel_name("1-0:1.8.2"), Some("energy imported, tariff 2"));
        assert_eq!(channel_name("1-0:32.7.0.255"), Some("voltage, L1"));
        assert_eq!(channel_name("0-1:24.2.1"), Some("volume (M-Bus device)"));
        assert_eq!(channel_name("/3/0/9"), Some("battery level"));
        assert_eq!(channel_name("temperature"), None);
        assert_eq!(channel_name("1-0:99.99.9"), None);
    }
}
