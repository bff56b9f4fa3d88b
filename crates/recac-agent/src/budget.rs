//! What is left of a task's budget and whether it is spent (pure). Money is counted in
//! integer micro-units (millionths of the currency unit), never in floating point; it is read
//! from and written as decimal strings.

use recac_api::agent_contract::TokenUsage;

/// Micro-units in one unit of a currency.
pub const MICROS: u64 = recac_api::money::MICROS_PER_UNIT.unsigned_abs();

/// Why a decimal amount is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not a non-negative decimal number (e.g. `1.25`) that fits")]
    NotDecimal(String),
}

/// Reads a non-negative decimal number (`12`, `0.5`, `1.250`) as micro-units. Digits beyond
/// the sixth decimal place are rounded (half up).
pub fn parse_decimal(text: &str) -> Result<u64, MoneyError> {
    recac_api::money::parse_micros_rounded(text)
        .and_then(|m| u64::try_from(m).ok())
        .ok_or_else(|| MoneyError::NotDecimal(text.to_string()))
}

/// Reads a JSON number as micro-units (a CLI's reported cost): a decimal number, possibly with
/// an exponent (`1.5e-5`); `None` when it is negative or not a number.
pub fn parse_json_number(text: &str) -> Option<u64> {
    let text = text.trim();
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits, and where the decimal point falls among them after the exponent.
    let digits: String = format!("{whole}{fraction}");
    let point = i64::try_from(whole.len()).ok()? + i64::from(exponent);
    let plain = if point <= 0 {
        let zeros = usize::try_from(-point).ok()?.min(64);
        format!("0.{}{digits}", "0".repeat(zeros))
    } else {
        let point = usize::try_from(point).ok()?;
        if point >= digits.len() {
            format!("{digits}{}", "0".repeat((point - digits.len()).min(64)))
        } else {
            format!("{}.{}", &digits[..point], &digits[point..])
        }
    };
    parse_decimal(&plain).ok()
}

/// Micro-units as a decimal string without trailing zeros: `1.25`, `0.0026`, `3`.
pub fn format_micros(micros: u64) -> String {
    recac_api::money::format_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

/// A model's prices, in micro-units per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prices {
    pub input_per_million: u64,
    pub output_per_million: u64,
}

impl Prices {
    /// What `spent` costs, in micro-units (rounded up: a budget is never under-counted).
    pub fn cost(&self, spent: &TokenUsage) -> u64 {
        let micros = recac_api::money::token_cost_micros(
            spent.input_tokens,
            spent.output_tokens,
            self.input_per_million,
            self.output_per_million,
        );
        u64::try_from(micros).unwrap_or(u64::MAX)
    }
}

/// What is left of a task's budget (each `None`: no such limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Input and output tokens together.
    pub tokens: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Micro-units of [`Budget::currency`].
    pub cost: Option<u64>,
    pub currency: Option<String>,
    /// The model's prices, to count the cost as it goes.
    pub prices: Option<Prices>,
}

/// The first limit of a budget that was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reached {
    Tokens { spent: u64, budget: u64 },
    InputTokens { spent: u64, budget: u64 },
    OutputTokens { spent: u64, budget: u64 },
    Cost { spent: u64, budget: u64 },
}

impl Reached {
    /// For people: `the token budget (150) is spent: 220 tokens`.
    pub fn describe(&self, currency: Option<&str>) -> String {
        let money = |m: u64| match currency {
            Some(c) => format!("{} {c}", format_micros(m)),
            None => format_micros(m),
        };
        match self {
            Reached::Tokens { spent, budget } => {
                format!("the token budget ({budget}) is spent: {spent} tokens")
            }
            Reached::InputTokens { spent, budget } => {
                format!("the input-token budget ({budget}) is spent: {spent} input tokens")
            }
            Reached::OutputTokens { spent, budget } => {
                format!("the output-token budget ({budget}) is spent: {spent} output tokens")
            }
            Reached::Cost { spent, budget } => format!(
                "the cost budget ({}) is spent: {}",
                money(*budget),
                money(*spent)
            ),
        }
    }
}

impl Budget {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.tokens.is_some()
            || self.input_tokens.is_some()
            || self.output_tokens.is_some()
            || self.cost.is_some()
    }

    /// What `spent` cost, when the prices are known.
    pub fn cost_of(&self, spent: &TokenUsage) -> Option<u64> {
        self.prices.map(|p| p.cost(spent))
    }

    /// The first limit `spent` has reached (spent at least all of it), if any. A cost budget
    /// without prices cannot be counted and is never reached here.
    pub fn reached(&self, spent: &TokenUsage) -> Option<Reached> {
        let total = spent.input_tokens.saturating_add(spent.output_tokens);
        if let Some(budget) = self.tokens
            && total >= budget
        {
            return Some(Reached::Tokens {
                spent: total,
                budget,
            });
        }
        if let Some(budget) = self.input_tokens
            && spent.input_tokens >= budget
        {
            return Some(Reached::InputTokens {
                spent: spent.input_tokens,
                budget,
            });
        }
        if let Some(budget) = self.output_tokens
            && spent.output_tokens >= budget
        {
            return Some(Reached::OutputTokens {
                spent: spent.output_tokens,
                budget,
            });
        }
        if let (Some(budget), Some(cost)) = (self.cost, self.cost_of(spent))
            && cost >= budget
        {
            return Some(Reached::Cost {
                spent: cost,
                budget,
            });
        }
        None
    }

    /// The most output tokens the next reply may spend without going past the budget: what is
    /// left of the output and the total tokens, and what the cost left buys at the output
    /// price. `None`: no such limit.
    pub fn output_left(&self, spent: &TokenUsage) -> Option<u64> {
        let total = spent.input_tokens.saturating_add(spent.output_tokens);
        let by_output = self
            .output_tokens
            .map(|b| b.saturating_sub(spent.output_tokens));
        let by_total = self.tokens.map(|b| b.saturating_sub(total));
        let by_cost = match (self.cost, self.prices) {
            (Some(budget), Some(prices)) if prices.output_per_million > 0 => {
                let left = u128::from(budget.saturating_sub(prices.cost(spent)));
                let tokens = left * 1_000_000 / u128::from(prices.output_per_million);
                Some(u64::try_from(tokens).unwrap_or(u64::MAX))
            }
            _ => None,
        };
        [by_output, by_total, by_cost].into_iter().flatten().min()
    }

    /// A reply's output-token cap: `max` lowered to what is left (never below 1).
    pub fn cap_output(&self, spent: &TokenUsage, max: u32) -> u32 {
        match self.output_left(spent) {
            Some(left) => u32::try_from(left).unwrap_or(u32::MAX).clamp(1, max.max(1)),
            None => max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(input: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input_tokens: input,
            output_tokens: output,
        }
    }

    #[test]
    fn decimals_are_micro_units() {
        for (text, micros) in [
            ("0", 0),
            ("1", MICROS),
            ("1.25", 1_250_000),
            ("0.0026", 2_600),
            (" 12.000001 ", 12_000_001),
            ("0.0000004", 0),
            ("0.0000005", 1),
            ("3.9999995", 4_000_000),
        ] {
            assert_eq!(parse_decimal(text), Ok(micros), "{text}");
        }
        for bad in ["", "-1", "1.", ".5", "1,5", "1e3", "abc", "1.2.3", "+1"] {
            assert!(
                matches!(parse_decimal(bad), Err(MoneyError::NotDecimal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_decimal("99999999999999999999"),
            Err(MoneyError::NotDecimal(_))
        ));
        for (micros, text) in [
            (0, "0"),
            (MICROS, "1"),
            (1_250_000, "1.25"),
            (2_600, "0.0026"),
            (1, "0.000001"),
        ] {
            assert_eq!(format_micros(micros), text);
            assert_eq!(parse_decimal(text), Ok(micros));
        }
    }

    #[test]
    fn json_numbers_are_micro_units() {
        assert_eq!(parse_json_number("0.0079825"), Some(7_983));
        assert_eq!(parse_json_number("2"), Some(2 * MICROS));
        assert_eq!(parse_json_number("1.5e-5"), Some(15));
        assert_eq!(parse_json_number("2.5E2"), Some(250 * MICROS));
        assert_eq!(parse_json_number("1e-9"), Some(0));
        assert_eq!(parse_json_number("-1"), None);
        assert_eq!(parse_json_number("x"), None);
    }

    #[test]
    fn cost_rounds_up() {
        let prices = Prices {
            input_per_million: 10 * MICROS,
            output_per_million: 30 * MICROS,
        };
        // 100 * 10 + 10 * 30 = 1300 micro-units.
        assert_eq!(prices.cost(&spent(100, 10)), 1_300);
        let cheap = Prices {
            input_per_million: 1,
            output_per_million: 0,
        };
        assert_eq!(cheap.cost(&spent(1, 0)), 1);
        assert_eq!(cheap.cost(&spent(0, 0)), 0);
    }

    #[test]
    fn each_limit_is_reached_at_what_it_allows() {
        let none = Budget::default();
        assert!(!none.is_set());
        assert_eq!(none.reached(&spent(u64::MAX, u64::MAX)), None);
        assert_eq!(none.output_left(&spent(1, 1)), None);

        let tokens = Budget {
            tokens: Some(150),
            ..Budget::default()
        };
        assert_eq!(tokens.reached(&spent(100, 10)), None);
        assert_eq!(
            tokens.reached(&spent(200, 20)),
            Some(Reached::Tokens {
                spent: 220,
                budget: 150
            })
        );
        assert!(tokens.reached(&spent(140, 10)).is_some());
        assert_eq!(tokens.output_left(&spent(100, 10)), Some(40));

        let input = Budget {
            input_tokens: Some(100),
            ..Budget::default()
        };
        assert_eq!(input.reached(&spent(99, 1000)), None);
        assert!(matches!(
            input.reached(&spent(100, 0)),
            Some(Reached::InputTokens { .. })
        ));

        let output = Budget {
            output_tokens: Some(50),
            ..Budget::default()
        };
        assert_eq!(output.output_left(&spent(1000, 20)), Some(30));
        assert_eq!(output.cap_output(&spent(1000, 20), 8192), 30);
        assert_eq!(output.cap_output(&spent(1000, 20), 10), 10);
        assert!(matches!(
            output.reached(&spent(0, 50)),
            Some(Reached::OutputTokens { .. })
        ));

        // A zero budget is reached before anything is spent.
        let zero = Budget {
            tokens: Some(0),
            ..Budget::default()
        };
        assert!(zero.reached(&spent(0, 0)).is_some());
    }

    #[test]
    fn a_cost_budget_needs_prices() {
        let prices = Prices {
            input_per_million: 10 * MICROS,
            output_per_million: 30 * MICROS,
        };
        let cost = Budget {
            cost: Some(2_000),
            currency: Some("EUR".into()),
            prices: Some(prices),
            ..Budget::default()
        };
        assert_eq!(cost.reached(&spent(100, 10)), None);
        let reached = cost.reached(&spent(200, 20)).unwrap();
        assert_eq!(
            reached,
            Reached::Cost {
                spent: 2_600,
                budget: 2_000
            }
        );
        assert_eq!(
            reached.describe(Some("EUR")),
            "the cost budget (0.002 EUR) is spent: 0.0026 EUR"
        );
        // 700 micro-units left buy 23 output tokens at 30 per million.
        assert_eq!(cost.output_left(&spent(100, 10)), Some(23));
        let unpriced = Budget {
            prices: None,
            ..cost
        };
        assert_eq!(unpriced.reached(&spent(u64::MAX / 2, 0)), None);
        assert_eq!(unpriced.cost_of(&spent(1, 1)), None);
    }
}
