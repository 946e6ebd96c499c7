//! Built-in reward functions, pure: each scores one response.
//!
//! The answer of a text (README: Algorithms and rewards): what follows the last `####` (GSM8K's marker) if there
//! is one, else the whole text; its first line, trimmed, without one trailing period. When the
//! reference's answer is a number, the response's answer is the first number in that part of the
//! response, compared numerically; otherwise the two answers must be equal as strings
//! (case-sensitive).
use regex::Regex;

use crate::error::{Error, Result};

/// The part of a text its answer is taken from: after the last `####`, else all of it.
fn answer_part(text: &str) -> &str {
    text.rsplit_once("####").map_or(text, |(_, after)| after)
}

/// The answer of `text` as a string (see the module's rule).
pub fn extract_answer(text: &str) -> String {
    let first_line = answer_part(text).trim_start().lines().next().unwrap_or("");
    let trimmed = first_line.trim();
    trimmed
        .strip_suffix('.')
        .unwrap_or(trimmed)
        .trim()
        .to_string()
}

/// The first number (`-?digits[.digits]`) in the answer part of `text`.
fn first_number(text: &str) -> Option<f64> {
    let number = Regex::new(r"-?\d+(\.\d+)?").expect("a valid pattern");
    number.find(answer_part(text))?.as_str().parse().ok()
}

/// 1 when `response`'s answer equals `reference`'s, else 0.
pub fn exact_answer(response: &str, reference: &str) -> f64 {
    let expected = extract_answer(reference);
    let equal = match expected.parse::<f64>() {
        Ok(n) => first_number(response).is_some_and(|got| (got - n).abs() < 1e-9),
        Err(_) => extract_answer(response) == expected,
    };
    f64::from(u8::from(equal))
}

/// 1 when a response matches the pattern (anywhere; anchor it with ^ and $), else 0.
pub struct FormatReward {
    regex: Regex,
}

impl FormatReward {
    /// `field` names the pattern's place in the spec for the error.
    pub fn new(pattern: &str, field: &str) -> Result<Self> {
        let regex = Regex::new(pattern)
            .map_err(|e| Error::invalid(field, format!("not a regular expression: {e}")))?;
        Ok(Self { regex })
    }

    pub fn score(&self, response: &str) -> f64 {
        f64::from(u8::from(self.regex.is_match(response)))
    }
}

/// -(tokens beyond `target`) / (max_new_tokens - target): 0 up to the target, -1 at the limit.
pub fn length_penalty(response_tokens: usize, target: u32, max_new_tokens: u32) -> f64 {
    let over = response_tokens.saturating_sub(target as usize) as f64;
    -over / f64::from(max_new_tokens.saturating_sub(target).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_answers_compare_the_first_number() {
        assert_eq!(exact_answer("42.", "42."), 1.0);
        assert_eq!(exact_answer("42. 42. 42", "42."), 1.0);
        assert_eq!(exact_answer(" 41.", "42."), 0.0);
        assert_eq!(exact_answer("no number", "42."), 0.0);
        assert_eq!(exact_answer("-3.50 apples", "-3.5"), 1.0);
        assert_eq!(exact_answer("so 3+4=7\n#### 12", "12"), 1.0);
        assert_eq!(exact_answer("#### 7\n", "#### 12"), 0.0);
    }

    #[test]
    fn text_answers_compare_the_first_line_case_sensitively() {
        assert_eq!(extract_answer("  Paris.\nmore"), "Paris");
        assert_eq!(exact_answer(" Paris.", "Paris"), 1.0);
        assert_eq!(exact_answer("paris", "Paris."), 0.0);
        assert_eq!(exact_answer("cat dog.", " cat dog."), 1.0);
    }

    #[test]
    fn format_matches_anywhere_unless_anchored() {
        let digits = FormatReward::new(r"^\d+\.$", "spec.rewards[0].pattern").unwrap();
        assert_eq!((digits.score("42."), digits.score("42. 1")), (1.0, 0.0));
        let err = FormatReward::new("(", "spec.rewards[0].pattern")
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("spec.rewards[0].pattern: not a regular expression")
        );
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn length_penalty_grows_past_the_target() {
        assert_eq!(length_penalty(0, 4, 12), 0.0);
        assert_eq!(length_penalty(4, 4, 12), 0.0);
        assert_eq!(length_penalty(8, 4, 12), -0.5);
        assert_eq!(length_penalty(12, 4, 12), -1.0);
        assert_eq!(length_penalty(6, 0, 12), -0.5);
    }
}
