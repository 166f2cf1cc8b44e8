//! Time formatting and parsing in UTC without a time-zone database (RFC 3339 is all we need:
//! our log lines, and the start times runtimes report). Std only: the static ecs-agent-init
//! uses it for its container log timestamps.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC with second precision, e.g. `2026-11-27T17:49:56Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (date_time, _) = split(t);
    format!("{date_time}Z")
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-27T17:49:56.123456789Z` (container log lines).
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let (date_time, nanos) = split(t);
    format!("{date_time}.{nanos:09}Z")
}

/// `YYYY-MM-DDTHH:MM:SS` and the nanoseconds of `t` (times before 1970 count as 1970).
fn split(t: SystemTime) -> (String, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let date_time = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (date_time, since.subsec_nanos())
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; `None` for anything else (or the zero time
/// runtimes report for "never").
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        let padded = format!("{:0<9}", &frac[..digits.min(9)]);
        nanos = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    (secs > 0).then(|| UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

/// "1h2m3s" style.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60) {
        (0, 0, 0, sec) => format!("{sec}s"),
        (0, 0, m, sec) => format!("{m}m{sec}s"),
        (0, h, m, sec) => format!("{h}h{m}m{sec}s"),
        (days, h, m, _) => format!("{days}d{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_801_796)),
            "2026-11-27T17:49:56Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn parse_round_trips() {
        for secs in [951_782_400u64, 1_795_801_796, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        let t = parse_rfc3339("2026-11-27T17:50:26.580621956Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_795_801_826, 580_621_956)
        );
        assert_eq!(
            parse_rfc3339("2026-11-27T18:50:26+01:00"),
            parse_rfc3339("2026-11-27T17:50:26Z")
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(human_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH + Duration::new(1_795_801_796, 5)),
            "2026-11-27T17:49:56.000000005Z"
        );
    }
}
