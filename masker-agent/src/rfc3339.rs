//! RFC 3339 timestamps (UTC) as masker writes them: audit events and
//! pending approvals with milliseconds, token expiries in messages to the
//! second.

use std::time::{SystemTime, UNIX_EPOCH};

/// The last second a four-digit year can show (`9999-12-31T23:59:59Z`).
const MAX_SECS: u64 = 253_402_300_799;

/// Now, with milliseconds (`2024-05-01T12:00:00.123Z`).
pub fn now_millis() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format(d.as_secs(), Some(d.subsec_millis()))
}

/// `secs` since the epoch, to the second (`2024-05-01T12:00:00Z`); a time
/// after year 9999 is given as the number itself.
pub fn seconds(secs: u64) -> String {
    if secs > MAX_SECS {
        return secs.to_string();
    }
    format(secs, None)
}

fn format(secs: u64, millis: Option<u32>) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    match millis {
        Some(ms) => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"),
        None => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time() {
        assert_eq!(format(0, Some(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(format(1_709_251_199, Some(5)), "2024-02-29T23:59:59.005Z");
    }

    #[test]
    fn seconds_match_the_time_crate() {
        for secs in [0, 1, 951_782_400, 1_709_251_199, 4_102_444_800, MAX_SECS] {
            let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
            let want = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            assert_eq!(seconds(secs), want);
        }
        assert_eq!(seconds(MAX_SECS + 1), (MAX_SECS + 1).to_string());
        assert_eq!(seconds(u64::MAX), u64::MAX.to_string());
    }
}
