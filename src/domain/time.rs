//! Timestamps: UTC milliseconds since the epoch, rendered as RFC 3339 with exactly three
//! fraction digits and a `Z` (one shape for every value).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A point in time, UTC, millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn from_datetime(dt: DateTime<Utc>) -> Self {
        Timestamp(dt.timestamp_millis())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.0).unwrap_or(DateTime::UNIX_EPOCH)
    }

    /// Parses an RFC 3339 timestamp with any offset; the result is UTC.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|dt| Timestamp(dt.with_timezone(&Utc).timestamp_millis()))
    }

    pub fn rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Whole seconds and nanoseconds, for the MessagePack timestamp extension.
    pub fn secs_nanos(self) -> (i64, u32) {
        let secs = self.0.div_euclid(1000);
        let nanos = (self.0.rem_euclid(1000) as u32) * 1_000_000;
        (secs, nanos)
    }

    pub fn year(self) -> i32 {
        use chrono::Datelike;
        self.to_datetime().year()
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_shape() {
        assert_eq!(Timestamp(0).rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_758_997_543_120).rfc3339(),
            "2025-09-27T18:25:43.120Z"
        );
    }

    #[test]
    fn parses_offsets_to_utc() {
        let t = Timestamp::parse_rfc3339("2025-09-27T20:25:43+02:00").unwrap();
        assert_eq!(t.rfc3339(), "2025-09-27T18:25:43.000Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn secs_nanos_handles_negative() {
        assert_eq!(Timestamp(-1).secs_nanos(), (-1, 999_000_000));
        assert_eq!(Timestamp(1500).secs_nanos(), (1, 500_000_000));
    }
}
