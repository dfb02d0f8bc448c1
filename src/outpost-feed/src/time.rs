//! Feed timestamps: `PLUGIN_SET = "YYYYMMDDHHMM"` is UTC wall time.

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

/// Days since 1970-01-01 (Howard Hinnant's civil-from-days, inverted);
/// only for years >= 1970, which the caller guarantees.
fn days_from_civil(y: u32, m: u32, d: u32) -> u64 {
    let y = if m <= 2 { y - 1 } else { y } as u64;
    let era = y / 400;
    let yoe = y - era * 400;
    let m = m as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

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
