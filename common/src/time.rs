//! Wall-clock helpers and duration parsing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses a duration: humantime's syntax (`250ms`, `30s`, `5m`, `1h 30m`, `2days`), or
/// a bare number of seconds (`2`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let bad = || {
        Error::invalid(format!(
            "invalid duration `{s}`: write e.g. 250ms, 30s, 5m, 1h 30m"
        ))
    };
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    humantime::parse_duration(t).map_err(|_| bad())
}

/// Parses a retention period (`--retain-finished`): a duration as [`parse_duration`]
/// reads it, or `0`/`off`/`never` to keep forever (`None`).
pub fn parse_retention(s: &str) -> Result<Option<Duration>> {
    let t = s.trim();
    if matches!(t.to_ascii_lowercase().as_str(), "off" | "never" | "forever") {
        return Ok(None);
    }
    let d = parse_duration(t).map_err(|_| {
        Error::invalid(format!(
            "invalid retention `{s}`: write a duration (e.g. 7d, 12h, 30m) or `off` to keep forever"
        ))
    })?;
    Ok((!d.is_zero()).then_some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions() {
        assert_eq!(
            parse_retention("7d").unwrap(),
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(parse_retention("1s").unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(parse_retention("0").unwrap(), None);
        assert_eq!(parse_retention("off").unwrap(), None);
        assert!(parse_retention("soon").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
    }
}

/// Serde support for optional durations written as text (`"30s"`, `"5m"`,
/// `"1h 30m"`): `#[serde(default, with = "shoal_common::time::opt_duration")]`.
pub mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Serde support for an optional retention period written as text (`"7d"`, `"off"`):
/// the outer `Option` is whether the key is there, the inner one `None` for "keep
/// forever". `#[serde(default, with = "shoal_common::time::opt_retention")]`.
pub mod opt_retention {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| super::parse_retention(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
