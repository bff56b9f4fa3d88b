//! Amounts of money as the API and the agent's result write them (decimal strings such as
//! "12.50") and as recac counts them: integer millionths of the unit, never floating point.

/// Millionths of a currency unit in one unit.
pub const MICROS_PER_UNIT: i64 = 1_000_000;
/// Decimal places an amount given to recac may have: millionths hold it exactly.
pub const MAX_DECIMALS: usize = 6;
/// Digits before the decimal point an amount may have.
const MAX_WHOLE_DIGITS: usize = 12;

/// `text` ("12", "12.5", "0.000001") in millionths; `None` when it is not a non-negative
/// decimal number with at most [`MAX_DECIMALS`] decimals that fits.
pub fn parse_micros(text: &str) -> Option<i64> {
    parse(text, false)
}

/// Like [`parse_micros`], but digits beyond the sixth decimal place are rounded half up (a
/// cost an agent CLI reported).
pub fn parse_micros_rounded(text: &str) -> Option<i64> {
    parse(text.trim(), true)
}

fn parse(text: &str, round: bool) -> Option<i64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
        Some(_) => return None,
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > MAX_WHOLE_DIGITS || !digits(whole) || !digits(fraction) {
        return None;
    }
    if !round && fraction.len() > MAX_DECIMALS {
        return None;
    }
    let mut micros: i64 = 0;
    for b in fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(MAX_DECIMALS)
    {
        micros = micros * 10 + i64::from(b - b'0');
    }
    if fraction.len() > MAX_DECIMALS && fraction.as_bytes()[MAX_DECIMALS] >= b'5' {
        micros += 1;
    }
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(MICROS_PER_UNIT)?
        .checked_add(micros)
}

/// `micros` as a decimal string without trailing zeros: "12.5", "3", "0.000001", "-2.25".
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    let per_unit = MICROS_PER_UNIT.unsigned_abs();
    let (whole, fraction) = (magnitude / per_unit, magnitude % per_unit);
    if fraction == 0 {
        return format!("{sign}{whole}");
    }
    let fraction = format!("{fraction:06}");
    format!("{sign}{whole}.{}", fraction.trim_end_matches('0'))
}

/// What `input` and `output` tokens cost at prices per million tokens (in millionths), in
/// millionths, rounded up: the agent that stops at a budget and the operator that counts the
/// spend price alike, and a budget is never under-counted.
pub fn token_cost_micros(
    input: u64,
    output: u64,
    input_per_million: u64,
    output_per_million: u64,
) -> i64 {
    let total = u128::from(input) * u128::from(input_per_million)
        + u128::from(output) * u128::from(output_per_million);
    i64::try_from(total.div_ceil(1_000_000)).unwrap_or(i64::MAX)
}

/// Whether `code` is a currency code: three capital letters (ISO 4217 style, e.g. USD).
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip_in_millionths() {
        for (text, micros) in [
            ("12", 12_000_000),
            ("12.5", 12_500_000),
            ("0.000001", 1),
            ("1.25", 1_250_000),
        ] {
            assert_eq!(parse_micros(text), Some(micros), "{text}");
        }
        for bad in [
            "",
            "-1",
            "1.",
            ".5",
            "1.2345678",
            "1e3",
            "one",
            "1,5",
            "1234567890123",
            " 1",
        ] {
            assert_eq!(parse_micros(bad), None, "{bad}");
        }
        assert_eq!(parse_micros_rounded("0.0000015"), Some(2));
        assert_eq!(parse_micros_rounded("0.0000014"), Some(1));
        assert_eq!(format_micros(12_500_000), "12.5");
        assert_eq!(format_micros(1), "0.000001");
        assert_eq!(format_micros(3_000_000), "3");
        assert_eq!(format_micros(-2_250_000), "-2.25");
        assert_eq!(
            token_cost_micros(1_000_000, 200_000, 2_500_000, 10_000_000),
            4_500_000
        );
        assert_eq!(token_cost_micros(1, 0, 1, 0), 1, "rounded up");
        assert!(is_currency_code("USD") && !is_currency_code("usd") && !is_currency_code("US"));
    }
}
