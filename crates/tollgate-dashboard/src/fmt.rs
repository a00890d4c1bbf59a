//! How pages write amounts, quantities and times. Amounts are the exact nano-USD a query
//! answered, written as decimals (never through a float): [`usd`] in full, [`usd_cents`]
//! rounded to the cent for headline figures (half away from zero, as money is rounded
//! everywhere in tollgate).

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use tollgate_core::{Nanos, Timestamp};

fn dollars(d: Decimal) -> String {
    let sign = if d.is_sign_negative() && !d.is_zero() {
        "-"
    } else {
        ""
    };
    let text = d.abs().to_string();
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}${grouped}")
    } else {
        format!("{sign}${grouped}.{frac}")
    }
}

/// An exact amount: at least two decimals, and every nano-USD digit that is not zero
/// (`$0.0012`, `$1,234.50`).
pub fn usd(n: Nanos) -> String {
    usd_exact(n.to_usd())
}

/// An exact USD decimal as an API answer carries it (an invoice's amounts, a unit price such as
/// `$0.0000015`): at least two decimals and every digit that is not zero, like [`usd`].
pub fn usd_exact(d: Decimal) -> String {
    let mut d = d.normalize();
    if d.scale() < 2 {
        d.rescale(2);
    }
    dollars(d)
}

/// An amount rounded to the cent (`$24.99`): headline figures.
pub fn usd_cents(n: Nanos) -> String {
    let mut d = n
        .to_usd()
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    d.rescale(2);
    dollars(d)
}

/// An amount as a form's field holds it, exactly, without a sign or separators: `25.00`,
/// `12.345` (what the API reads back as the same amount).
pub fn usd_field(n: Nanos) -> String {
    let mut d = n.to_usd().normalize();
    if d.scale() < 2 {
        d.rescale(2);
    }
    d.to_string()
}

/// A quantity, exactly, without trailing zeros.
pub fn quantity(d: Decimal) -> String {
    d.normalize().to_string()
}

/// A percent (`10` is `10%`).
pub fn percent(d: Decimal) -> String {
    format!("{}%", d.normalize())
}

fn utc(t: Timestamp) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(t.0).unwrap_or_default()
}

/// `2026-12-06 11:47 UTC`.
pub fn datetime(t: Timestamp) -> String {
    utc(t).format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `2026-12-01 00:00 Europe/Berlin`: a time in a time zone the reader chose (a spending
/// limit's), to the minute.
pub fn datetime_in(t: Timestamp, tz: chrono_tz::Tz) -> String {
    format!(
        "{} {}",
        utc(t).with_timezone(&tz).format("%Y-%m-%d %H:%M"),
        tz.name()
    )
}

/// What share of `whole` `part` is, in whole percent rounded down (`37%`; past the whole,
/// past 100%): how far a limit's period has gone, for reading (never an amount).
pub fn share(part: Nanos, whole: Nanos) -> String {
    if whole.0 <= 0 {
        return "–".into();
    }
    format!("{}%", i128::from(part.0) * 100 / i128::from(whole.0))
}

/// `2026-12-06 11:47:05`: an event's time in UTC, to the second, in a column whose header
/// names the zone.
pub fn utc_seconds(t: Timestamp) -> String {
    utc(t).format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `2026-12-06`.
pub fn date(t: Timestamp) -> String {
    utc(t).format("%Y-%m-%d").to_string()
}

/// A period `[start, end)` as the dates it covers, both included (`2026-11-01 – 2026-11-30`
/// for November), or one date (a period within a day, or an instant such as a top-up's).
pub fn period(start: Timestamp, end: Timestamp) -> String {
    let last = if end > start { end.minus_ms(1) } else { end };
    if date(start) == date(last) {
        date(start)
    } else {
        format!("{} – {}", date(start), date(last))
    }
}

/// A duration in milliseconds, as a person reads it (`850 ms`, `12.4 s`, `3 min 20 s`).
pub fn duration_ms(ms: i64) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1000..=59_999 => {
            let tenths = (ms + 50) / 100;
            format!("{}.{} s", tenths / 10, tenths % 10)
        }
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_written_exactly_or_to_the_cent() {
        assert_eq!(usd(Nanos(1_200_000)), "$0.0012");
        assert_eq!(usd(Nanos(1_234_500_000_000)), "$1,234.50");
        assert_eq!(usd(Nanos(-25_000_000_000)), "-$25.00");
        assert_eq!(usd(Nanos(0)), "$0.00");
        assert_eq!(usd_exact(Decimal::new(25, 0)), "$25.00");
        assert_eq!(usd_exact(Decimal::new(15, 8)), "$0.00000015");
        assert_eq!(usd_exact(Decimal::new(-123_450, 2)), "-$1,234.50");
        assert_eq!(usd_cents(Nanos(24_995_000_000)), "$25.00");
        assert_eq!(usd_cents(Nanos(24_994_999_999)), "$24.99");
        assert_eq!(usd_cents(Nanos(-5_000_000)), "-$0.01");
        assert_eq!(usd_cents(Nanos(1_000_000_000_000)), "$1,000.00");
        assert_eq!(usd_exact(Decimal::new(25, 3)), "$0.025");
        assert_eq!(usd_exact(Decimal::new(15, 7)), "$0.0000015");
        assert_eq!(usd_exact(Decimal::new(4, 0)), "$4.00");
    }

    #[test]
    fn a_period_shows_the_dates_it_covers() {
        let nov = Timestamp(1_793_491_200_000); // 2026-11-01T00:00:00Z
        let dec = Timestamp(1_796_083_200_000); // 2026-12-01T00:00:00Z
        assert_eq!(period(nov, dec), "2026-11-01 – 2026-11-30");
        assert_eq!(period(nov, nov.plus_ms(86_400_000)), "2026-11-01");
        assert_eq!(period(nov, nov), "2026-11-01");
    }

    #[test]
    fn times_in_a_zone_and_shares_of_an_amount() {
        let dec_utc = Timestamp(1_796_083_200_000); // 2026-12-01T00:00:00Z
        assert_eq!(
            datetime_in(dec_utc, chrono_tz::Tz::Europe__Berlin),
            "2026-12-01 01:00 Europe/Berlin"
        );
        assert_eq!(
            datetime_in(dec_utc, chrono_tz::Tz::UTC),
            "2026-12-01 00:00 UTC"
        );
        assert_eq!(share(Nanos(3_999), Nanos(10_000)), "39%");
        assert_eq!(share(Nanos(25_000), Nanos(10_000)), "250%");
        assert_eq!(share(Nanos(0), Nanos(10_000)), "0%");
        assert_eq!(share(Nanos(1), Nanos(0)), "–");
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_449), "12.4 s");
        assert_eq!(duration_ms(200_000), "3 min 20 s");
    }
}
