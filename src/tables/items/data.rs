//! Reading `items.data` as stored. Other programs write the table too, and JSON allows numbers
//! the model cannot hold: `serde_json::Value` keeps an integer exactly only within 64 bits and
//! anything else as an `f64`. Read as is, `1e400` is a decode error and a 30-digit integer
//! comes back rounded, which an update would then write back in place of the stored value. So
//! a value with such a number is refused for its row alone, as [`Error::Unreadable`] naming the
//! row and the number; everything `Value` holds exactly is read as before.
//!
//! Why not serde_json's `arbitrary_precision`: it is a feature of the one `serde_json` every
//! crate in a service shares, and it changes how all of them compare and deserialize numbers.

use serde_json::Value;

use crate::error::{Error, Result};

/// `items.data` of the row `id`, as the model holds it, or [`Error::Unreadable`] when that
/// would change a number or the text is not JSON `Value` can read (nested past serde_json's
/// depth limit, say).
pub(super) fn read(id: i64, text: &str) -> Result<Value> {
    if let Some(reason) = first_inexact_number(text) {
        return Err(unreadable(id, reason));
    }
    serde_json::from_str(text).map_err(|err| unreadable(id, err.to_string()))
}

fn unreadable(id: i64, reason: String) -> Error {
    Error::Unreadable {
        entity: "item",
        id,
        reason,
    }
}

/// Why the first number in this JSON text that `Value` cannot hold exactly cannot be held, or
/// `None` when every number can. Strings are skipped (a digit inside one is not a number).
pub(super) fn first_inexact_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => at = string_end(bytes, at + 1),
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at < bytes.len()
                    && matches!(bytes[at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    at += 1;
                }
                if let Some(reason) = inexact(&text[start..at]) {
                    return Some(reason);
                }
            }
            _ => at += 1,
        }
    }
    None
}

/// The index just past the closing quote of the string whose contents start at `at`.
fn string_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return at + 1,
            _ => at += 1,
        }
    }
    at
}

/// Why `Value` would not hold the JSON number `token` exactly, or `None` when it would.
fn inexact(token: &str) -> Option<String> {
    let integer = !token.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
    // The common case, and the one serde_json keeps exact: an integer within 64 bits.
    if integer && (token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok()) {
        return None;
    }
    // Anything else becomes the nearest f64, written back the shortest way that reads as that
    // f64 again (ryu, as serde_json writes it). It is exact when that text is the same number.
    let float: f64 = token.parse().ok()?;
    if !float.is_finite() {
        return Some(format!(
            "the number {} is beyond the range of a 64-bit float",
            shown(token)
        ));
    }
    let mut buffer = ryu::Buffer::new();
    let written = buffer.format_finite(float);
    if Decimal::of(token) == Decimal::of(written) {
        return None;
    }
    Some(format!(
        "the number {} has more precision than a 64-bit float holds; it would read as {written}",
        shown(token)
    ))
}

/// A number's text for a message; a long one (PostgreSQL writes `1e400` out in full, 401
/// characters) in scientific notation from its significant digits, the first 16 of them.
fn shown(token: &str) -> String {
    if token.len() <= 48 {
        return token.to_owned();
    }
    let Decimal {
        negative,
        digits,
        exponent,
    } = Decimal::of(token);
    let Some(first) = digits.get(..1) else {
        return "0".to_owned();
    };
    let rest = &digits[1..digits.len().min(16)];
    let cut = if digits.len() > 16 { "…" } else { "" };
    let point = if rest.is_empty() { "" } else { "." };
    let power = exponent.saturating_add(digits.len() as i64 - 1);
    let sign = if negative { "-" } else { "" };
    format!("{sign}{first}{point}{rest}{cut}e{power}")
}

/// A decimal number as sign, significant digits (no leading or trailing zeros) and the power
/// of ten of the last one, so that `1e23`, `100000000000000000000000` and `1.0e23` are equal.
#[derive(Debug, PartialEq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn of(number: &str) -> Decimal {
        let (negative, unsigned) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], parse_exponent(&unsigned[at + 1..])),
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all: String = whole.chars().chain(fraction.chars()).collect();
        let trimmed = all.trim_start_matches('0');
        let significant = trimmed.trim_end_matches('0');
        let dropped = (trimmed.len() - significant.len()) as i64;
        if significant.is_empty() {
            // Zero, whatever its sign or exponent.
            return Decimal {
                negative: false,
                digits: String::new(),
                exponent: 0,
            };
        }
        Decimal {
            negative,
            digits: significant.to_owned(),
            exponent: exponent
                .saturating_sub(fraction.len() as i64)
                .saturating_add(dropped),
        }
    }
}

/// An exponent's digits (with an optional sign), saturating: a number whose exponent does not
/// fit in 64 bits is already beyond any f64 and refused before this matters.
fn parse_exponent(text: &str) -> i64 {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = digits.bytes().fold(0_i64, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(i64::from(digit - b'0'))
    });
    if negative { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> Option<String> {
        first_inexact_number(text)
    }

    #[test]
    fn numbers_value_holds_exactly_are_read() {
        for text in [
            r#"{"n": 1, "m": -9223372036854775808, "u": 18446744073709551615}"#,
            r#"[0.1, 1.5e-10, 1e23, 100000000000000000000000, -0.0, 2.5E+3, 5e-324]"#,
            r#"{"s": "123456789012345678901234567890 and 1e400 in a string", "e": "\"1e400"}"#,
            r#"{"1e400": 1.7976931348623157e308}"#,
        ] {
            assert_eq!(reason(text), None, "{text}");
            assert!(read(1, text).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_number_out_of_range_or_past_f64_precision_is_named() {
        let huge = reason(r#"{"n": 1e400}"#).unwrap();
        assert!(huge.contains("1e400") && huge.contains("range"), "{huge}");
        let long = reason(r#"[1, 123456789012345678901234567890]"#).unwrap();
        assert!(long.contains("123456789012345678901234567890"), "{long}");
        assert!(long.contains("1.2345678901234568e29"), "{long}");
        assert!(reason("[0.1000000000000000055511151231257827]").is_some());
        assert!(reason("[1e-400]").is_some(), "underflows to zero");
        let written_out = format!("[1{}]", "0".repeat(400));
        let long = reason(&written_out).unwrap();
        assert!(long.contains(" 1e400 "), "{long}");
        assert_eq!(
            shown(&format!("-12345678901234567{}.5", "0".repeat(40))),
            "-1.234567890123456…e56"
        );
    }

    #[test]
    fn an_unreadable_row_is_named_by_its_id() {
        match read(42, r#"{"n": 1e400}"#) {
            Err(Error::Unreadable { entity, id, reason }) => {
                assert_eq!((entity, id), ("item", 42));
                assert!(reason.contains("1e400"), "{reason}");
            }
            other => panic!("expected Unreadable, got {other:?}"),
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            read(7, &deep),
            Err(Error::Unreadable { id: 7, .. })
        ));
    }

    #[test]
    fn decimals_compare_by_value() {
        assert_eq!(Decimal::of("1e23"), Decimal::of("100000000000000000000000"));
        assert_eq!(Decimal::of("1.50"), Decimal::of("15e-1"));
        assert_eq!(Decimal::of("-0.0"), Decimal::of("0"));
        assert_ne!(Decimal::of("1.5"), Decimal::of("-1.5"));
    }
}
