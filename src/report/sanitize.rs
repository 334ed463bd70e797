//! One place where text that came from a submission (ONNX names and metadata, file and folder names,
//! error messages that quote them) is made safe to show: control characters (C0, DEL, C1, which
//! includes the escape that starts an ANSI sequence) are written as visible `\u{..}` escapes, so a
//! submission can neither recolour nor rewrite the terminal, nor add lines to a log, a CSV cell, an
//! HTML page, JUnit or Markdown. Every sink that shows submission text goes through these two
//! functions (see SECURITY.md, "Text from the submission").

use std::borrow::Cow;

fn is_control(c: char) -> bool {
    c.is_control() // C0 (U+0000..U+001F), DEL (U+007F) and C1 (U+0080..U+009F)
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_control(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) && !keep(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// For one line (a CSV cell, a table cell, a status line): every control character is escaped,
/// newlines and tabs included.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, |_| false)
}

/// For a multi-line message (an error printed on stderr, a report's notes): newlines and tabs stay,
/// every other control character (ESC, CR, BEL, backspace, C1...) is escaped.
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, |c| c == '\n' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(line("plain ünïcode"), "plain ünïcode");
        assert!(matches!(line("plain"), Cow::Borrowed(_)));
        assert_eq!(line("\x1b[31mred\x1b[0m"), "\\u{1b}[31mred\\u{1b}[0m");
        assert_eq!(line("a\nb\rc\td\x7f\u{9b}e"), "a\\u{a}b\\u{d}c\\u{9}d\\u{7f}\\u{9b}e");
        assert_eq!(text("a\nb\tc\r\x1b]0;title\x07"), "a\nb\tc\\u{d}\\u{1b}]0;title\\u{7}");
        assert_eq!(line("abc\u{202e}cba"), "abc\\u{202e}cba");
        for s in [line("\x1b\x00\u{85}x"), text("\x1b\x00\u{85}x\n")] {
            assert!(!s.chars().any(|c| c.is_control() && c != '\n'), "{s:?}");
        }
    }
}
