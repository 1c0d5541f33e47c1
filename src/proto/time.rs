//! The wire timestamp: UTC, ISO 8601 with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ`.

use std::fmt::Write;

/// Appends the timestamp of `ms` (milliseconds since the Unix epoch) to `out` (a string, or a
/// line being formatted).
pub fn write_timestamp<W: Write + ?Sized>(out: &mut W, ms: i64) {
    if let Some(b) = timestamp_bytes(ms) {
        // Digits and separators only: always UTF-8.
        if let Ok(text) = std::str::from_utf8(&b) {
            let _ = out.write_str(text);
            return;
        }
    }
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
}

/// The timestamp of `ms` as bytes, for a line encoded onto bytes; `None` outside the years 0 to
/// 9999 (which [`write_timestamp`] writes with their sign or their fifth digit).
///
/// Every message line carries a timestamp: digits placed by hand cost a tenth of what `write!`
/// does, and the date and time of day are kept for the last second seen on this thread, since
/// the messages of one second share them (the calendar's divisions were most of the cost).
#[inline]
pub fn timestamp_bytes(ms: i64) -> Option<[u8; 24]> {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (last, mut b) = LAST_SECOND.get();
    if last != secs || b[0] == 0 {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return None;
        }
        b = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut b[0..4], y as u32);
        put_digits(&mut b[5..7], m);
        put_digits(&mut b[8..10], d);
        put_digits(&mut b[11..13], (sod / 3600) as u32);
        put_digits(&mut b[14..16], ((sod / 60) % 60) as u32);
        put_digits(&mut b[17..19], (sod % 60) as u32);
        LAST_SECOND.set((secs, b));
    }
    put_digits(&mut b[20..23], millis as u32);
    Some(b)
}

thread_local! {
    /// The last second [`timestamp_bytes`] wrote, and its text (all zero bytes before the first).
    static LAST_SECOND: std::cell::Cell<(i64, [u8; 24])> = const { std::cell::Cell::new((0, [0; 24])) };
}

/// Writes `v` in decimal into all of `slot`, zero-padded (the highest digits are dropped if `v`
/// has more digits than `slot` has room for; callers pass values that fit).
fn put_digits(slot: &mut [u8], mut v: u32) {
    for c in slot.iter_mut().rev() {
        *c = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// The timestamp of `ms` as a new string.
pub fn timestamp(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    write_timestamp(&mut s, ms);
    s
}

/// The milliseconds since the Unix epoch that `s` names, if `s` is a well-formed wire timestamp of
/// a real instant: `parse_timestamp(&timestamp(ms)) == Some(ms)`, and a string that is not exactly
/// what [`timestamp`] would print (a 30 February, an hour 24) is `None`.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    const SHAPE: &[u8; 24] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let b = s.as_bytes();
    if b.len() != SHAPE.len()
        || !b.iter().zip(SHAPE).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
    {
        return None;
    }
    let num = |from: usize, to: usize| -> i64 {
        b[from..to]
            .iter()
            .fold(0, |n, d| n * 10 + i64::from(d - b'0'))
    };
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let (hh, mm, ss, ms) = (num(11, 13), num(14, 16), num(17, 19), num(20, 23));
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let days = days_from_civil(y, m as u32, d as u32);
    // A day past the month's end lands in the next month: it does not print back the same.
    if civil_from_days(days) != (y, m as u32, d as u32) {
        return None;
    }
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

/// A (year, month, day) of the proleptic Gregorian calendar to days since 1970-01-01
/// (H. Hinnant's algorithm; the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::{parse_timestamp, timestamp};

    #[test]
    fn known_instants() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp(1_795_219_200_007), "2026-11-21T00:00:00.007Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_second_kept_between_calls_never_leaks_into_another() {
        // Within a second, across its ends, back to an earlier second, before the epoch.
        let cases = [
            (1_795_219_200_007, "2026-11-21T00:00:00.007Z"),
            (1_795_219_200_999, "2026-11-21T00:00:00.999Z"),
            (1_795_219_201_000, "2026-11-21T00:00:01.000Z"),
            (1_795_219_200_500, "2026-11-21T00:00:00.500Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-1000, "1969-12-31T23:59:59.000Z"),
            (-1001, "1969-12-31T23:59:58.999Z"),
            (0, "1970-01-01T00:00:00.000Z"),
        ];
        for (ms, text) in cases.iter().chain(cases.iter().rev()) {
            assert_eq!(timestamp(*ms), *text, "{ms}");
            assert_eq!(
                super::timestamp_bytes(*ms).as_ref().map(|b| &b[..]),
                Some(text.as_bytes())
            );
        }
    }

    #[test]
    fn digits_placed_by_hand_match_the_formatted_text() {
        let formatted = |ms: i64| {
            let secs = ms.div_euclid(1000);
            let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            let (y, m, d) = super::civil_from_days(days);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3600,
                (sod / 60) % 60,
                sod % 60,
                ms.rem_euclid(1000)
            )
        };
        let mut ms: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z, the first fast one
        while ms < 253_402_300_800_000 {
            assert_eq!(timestamp(ms), formatted(ms), "{ms}");
            ms += 9_876_543_211;
        }
        for ms in [
            -62_167_219_200_001,
            -62_167_219_200_000,
            253_402_300_799_999,
            253_402_300_800_000,
            i64::MAX / 2,
        ] {
            assert_eq!(timestamp(ms), formatted(ms), "{ms}");
        }
    }

    #[test]
    fn parse_is_the_inverse_of_print() {
        for ms in [
            0,
            951_782_400_123,
            1_795_219_200_007,
            1,
            86_399_999,
            253_402_300_799_999,
        ] {
            assert_eq!(parse_timestamp(&timestamp(ms)), Some(ms), "{ms}");
        }
        for bad in [
            "2026-02-30T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-00-01T00:00:00.000Z",
            "2026-01-01T24:00:00.000Z",
            "2026-01-01T00:60:00.000Z",
            "2026-01-01 00:00:00.000Z",
            "2026-01-01T00:00:00.000",
            "+026-01-01T00:00:00.000Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(
            parse_timestamp("2024-02-29T23:59:59.999Z"),
            Some(1_709_251_199_999)
        );
    }
}
