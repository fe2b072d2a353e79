//! The API's one time format: milliseconds since the epoch in JSON numbers, RFC 3339 (UTC,
//! milliseconds) in text meant for people.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-12-01T17:00:00.000Z`.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

/// Milliseconds since the epoch of an RFC 3339 time in UTC, written out in full:
/// `2026-12-31T00:00:00Z` (fractions allowed; no offset other than `Z`, nothing left out).
pub fn parse_rfc3339_utc_ms(text: &str) -> Option<u64> {
    humantime::parse_rfc3339(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_survive_a_round_trip() {
        let ms = 1_796_144_400_123;
        assert_eq!(super::rfc3339(ms), "2026-12-01T17:00:00.123Z");
        assert_eq!(super::parse_rfc3339_ms(&super::rfc3339(ms)), Some(ms));
        assert_eq!(super::parse_rfc3339_ms("yesterday"), None);
        assert_eq!(
            super::parse_rfc3339_utc_ms("2026-12-01T17:00:00.123Z"),
            Some(ms)
        );
        assert_eq!(super::parse_rfc3339_utc_ms("2026-12-01T17:00:00"), None);
        assert_eq!(super::parse_rfc3339_utc_ms("2026-12-01"), None);
    }
}
