//! UTC `YYYYMMDDhhmmss` stamps of the whitelist, converted without a date crate.
//!
//! The conversions are Howard Hinnant's `civil_from_days` / `days_from_civil` on the proleptic
//! Gregorian calendar, which is what `date -u` and `timegm` use.

const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: i64 = 719_468;
const DAYS_PER_ERA: i64 = 146_097;

/// Formats unix seconds (UTC) as `YYYYMMDDhhmmss`, e.g. `0` → `19700101000000`.
///
/// Years before 0 or after 9999 do not fit the 14-character form; the whitelist signer
/// rejects the resulting text.
pub fn utc_stamp(unix: i64) -> String {
    let days = unix.div_euclid(SECONDS_PER_DAY);
    let secs = unix.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses a strict `YYYYMMDDhhmmss` stamp (14 ASCII digits, valid date and time) to unix seconds.
pub(crate) fn parse_utc_stamp(text: &str) -> Option<i64> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| text[range].parse::<i64>().ok();
    let (year, month, day) = (field(0..4)?, field(4..6)?, field(6..8)?);
    let (hour, minute, second) = (field(8..10)?, field(10..12)?, field(12..14)?);
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second)
}

/// The start of the UTC hour containing `unix` (the whitelist expiry granularity).
pub(crate) fn hour_floor(unix: i64) -> i64 {
    unix - unix.rem_euclid(3600)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// (year, month 1–12, day 1–31) of a day count relative to 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + EPOCH_SHIFT;
    let era = z.div_euclid(DAYS_PER_ERA);
    let doe = z.rem_euclid(DAYS_PER_ERA);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    // Months counted from March so that the leap day is the last day of the year.
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day count relative to 1970-01-01 of a valid civil date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * DAYS_PER_ERA + doe - EPOCH_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_stamps() {
        assert_eq!(utc_stamp(0), "19700101000000");
        assert_eq!(utc_stamp(1_700_000_000), "20231114221320");
        assert_eq!(utc_stamp(951_782_400), "20000229000000");
        assert_eq!(utc_stamp(1_709_251_199), "20240229235959");
        assert_eq!(utc_stamp(-1), "19691231235959");
        assert_eq!(utc_stamp(2_082_758_399), "20351231235959");
        // The reference whitelist's expiry line.
        assert_eq!(utc_stamp(2_111_184_000), "20361125000000");
    }

    #[test]
    fn parse_inverts_format() {
        let mut t = -3 * SECONDS_PER_DAY * 366;
        while t < 4_102_444_800 {
            assert_eq!(parse_utc_stamp(&utc_stamp(t)), Some(t), "{t}");
            t += 7_919 * 13 + 1;
        }
    }

    #[test]
    fn parse_rejects_invalid_stamps() {
        for bad in [
            "2024010100000",
            "202401010000000",
            "2024010100000a",
            "20241301000000",
            "20240001000000",
            "20240230000000",
            "20230229000000",
            "21000229000000",
            "20240101240000",
            "20240101006000",
            "20240101000060",
            "+2024010100000",
        ] {
            assert_eq!(parse_utc_stamp(bad), None, "{bad}");
        }
        assert!(parse_utc_stamp("20000229000000").is_some());
    }

    #[test]
    fn hour_floor_truncates_towards_past() {
        assert_eq!(hour_floor(7_199), 3_600);
        assert_eq!(hour_floor(7_200), 7_200);
        assert_eq!(hour_floor(-1), -3_600);
    }
}
