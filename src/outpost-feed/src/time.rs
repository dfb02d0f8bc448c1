//! Feed timestamps (`PLUGIN_SET = "YYYYMMDDHHMM"` is UTC wall time) and the UTC calendar
//! arithmetic behind them, which the device clock's console lines and the synthetic feed
//! generator use too (one copy of Howard Hinnant's civil-date algorithms).

/// (year, month, day, hour, minute, second) of a Unix time, UTC, proleptic Gregorian.
pub fn civil_from_unix(t: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3_600, secs % 3_600 / 60, secs % 60)
}

/// Unix seconds of a UTC date and time (proleptic Gregorian); the caller checks ranges.
pub fn unix_from_civil(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + s
}

/// Parses a `PLUGIN_SET` value (`YYYYMMDDHHMM`, UTC) into Unix seconds.
/// Returns `None` for anything that is not a real date and time.
pub fn parse_plugin_set(value: &str) -> Option<u64> {
    let v = value.trim();
    if v.len() != 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| v[r].parse::<u32>().ok();
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute) = (num(8..10)?, num(10..12)?);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + u64::from(hour) * 3600 + u64::from(minute) * 60)
}

fn is_leap(y: u32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01; only for years >= 1970, which the caller guarantees.
fn days_from_civil(y: u32, m: u32, d: u32) -> u64 {
    (unix_from_civil(i64::from(y), i64::from(m), i64::from(d), 0, 0, 0) / 86_400) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips() {
        // date -u -d @1764860462 -> 2025-12-04 15:01:02
        assert_eq!(civil_from_unix(1_764_860_462), (2025, 12, 4, 15, 1, 2));
        assert_eq!(civil_from_unix(-1), (1969, 12, 31, 23, 59, 59));
        for t in [0, 951_782_400, 4_107_542_399, 1_709_164_800] {
            let (y, mo, d, h, mi, s) = civil_from_unix(t);
            assert_eq!(unix_from_civil(y, mo, d, h, mi, s), t);
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(parse_plugin_set("197001010000"), Some(0));
        // date -u -d '2024-06-12 05:02' +%s
        assert_eq!(parse_plugin_set("202406120502"), Some(1_718_168_520));
        // A leap day.
        assert_eq!(parse_plugin_set("202402291200"), Some(1_709_208_000));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "2024061205",
            "2024061205021",
            "20240612050x",
            "202313010000",
            "202302290000",
            "202406122400",
            "202406121260",
            "196912312359",
        ] {
            assert_eq!(parse_plugin_set(bad), None, "{bad}");
        }
    }
}
