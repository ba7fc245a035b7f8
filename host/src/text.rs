//! Text from outside the host (a plugin's log lines, output and failure reasons, an
//! operator's note) made safe for the host's log: with the text formatter a newline in
//! it would start what looks like a log line of the host's own, and an escape sequence
//! would reach the operator's terminal. (The JSON formatter escapes them anyway.)

use std::borrow::Cow;

/// `text` with every control character (newlines, escape sequences, and the Unicode
/// line and paragraph separators) written as an escape (`\n`, `\u{1b}`).
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if unsafe_char(c) { c.escape_default().to_string() } else { c.to_string() })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("déclined: no funds"), Cow::Borrowed(_)));
        let forged = "ok\n2026-12-07T00:00:00Z ERROR wasaga: ALERT\u{1b}[2J\u{2028}";
        assert_eq!(printable(forged), "ok\\n2026-12-07T00:00:00Z ERROR wasaga: ALERT\\u{1b}[2J\\u{2028}");
    }
}
