//! Money: decimal amounts (never floats) and the number of minor digits each currency allows.

use rust_decimal::Decimal;

/// ISO 4217 currencies with no minor unit.
const ZERO_DIGITS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
/// ISO 4217 currencies with three minor digits.
const THREE_DIGITS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

/// Largest amount accepted for any single money field (guards the arithmetic).
pub const MAX_AMOUNT: i64 = 1_000_000_000;

/// Minor digits of a currency code, or `None` when the code is not three upper-case letters.
pub fn minor_digits(currency: &str) -> Option<u32> {
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    if ZERO_DIGITS.contains(&currency) {
        Some(0)
    } else if THREE_DIGITS.contains(&currency) {
        Some(3)
    } else {
        Some(2)
    }
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountError {
    NotANumber,
    Negative,
    TooManyDigits(u32),
    TooLarge,
}

impl AmountError {
    pub fn message(&self) -> String {
        match self {
            AmountError::NotANumber => "must be a decimal number".into(),
            AmountError::Negative => "must not be negative".into(),
            AmountError::TooManyDigits(d) => {
                format!("must have at most {d} decimal places for this currency")
            }
            AmountError::TooLarge => format!("must not exceed {MAX_AMOUNT}"),
        }
    }
}

/// Parses the literal text of a JSON number (or a numeric string's contents) exactly.
pub fn parse_amount(text: &str, digits: u32, allow_negative: bool) -> Result<Decimal, AmountError> {
    let t = text.trim();
    if t.is_empty() || t.len() > 40 {
        return Err(AmountError::NotANumber);
    }
    let d = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t).map_err(|_| AmountError::NotANumber)?
    } else {
        Decimal::from_str_exact(t).map_err(|_| AmountError::NotANumber)?
    };
    if d.is_sign_negative() && !d.is_zero() && !allow_negative {
        return Err(AmountError::Negative);
    }
    if d.abs() > Decimal::from(MAX_AMOUNT) {
        return Err(AmountError::TooLarge);
    }
    let normalized = d.normalize();
    if normalized.scale() > digits {
        return Err(AmountError::TooManyDigits(digits));
    }
    Ok(normalized)
}

/// Renders an amount with exactly the currency's minor digits (`28.5` in USD → `28.50`).
pub fn format_amount(amount: Decimal, digits: u32) -> String {
    let mut d = amount.round_dp(digits);
    d.rescale(digits);
    d.to_string()
}

/// A decimal from a literal, for tests.
#[cfg(test)]
pub(crate) fn dec(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digits_per_currency() {
        assert_eq!(minor_digits("USD"), Some(2));
        assert_eq!(minor_digits("JPY"), Some(0));
        assert_eq!(minor_digits("KWD"), Some(3));
        assert_eq!(minor_digits("usd"), None);
        assert_eq!(minor_digits("US"), None);
    }

    #[test]
    fn parse_rules() {
        assert_eq!(parse_amount("28.50", 2, false), Ok(dec("28.5")));
        assert_eq!(parse_amount("1e1", 2, false), Ok(dec("10")));
        assert_eq!(parse_amount("-1", 2, false), Err(AmountError::Negative));
        assert_eq!(parse_amount("-0", 2, false), Ok(dec("0")));
        assert_eq!(parse_amount("-1.5", 2, true), Ok(dec("-1.5")));
        assert_eq!(
            parse_amount("1.005", 2, false),
            Err(AmountError::TooManyDigits(2))
        );
        assert_eq!(
            parse_amount("1.50", 0, false),
            Err(AmountError::TooManyDigits(0))
        );
        assert_eq!(parse_amount("abc", 2, false), Err(AmountError::NotANumber));
        assert_eq!(
            parse_amount("10000000000", 2, false),
            Err(AmountError::TooLarge)
        );
    }

    #[test]
    fn format_pads_to_currency_digits() {
        assert_eq!(format_amount(dec("28.5"), 2), "28.50");
        assert_eq!(format_amount(dec("0"), 2), "0.00");
        assert_eq!(format_amount(dec("1200"), 0), "1200");
        assert_eq!(format_amount(dec("1.2"), 3), "1.200");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(cents in 0i64..1_000_000_000, digits in 0u32..4) {
            let d = Decimal::new(cents, digits);
            let text = format_amount(d, digits);
            prop_assert_eq!(parse_amount(&text, digits, false), Ok(d.normalize()));
        }
    }
}
