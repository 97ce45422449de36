//! Names inside a model are data, not text to send to a terminal: before a name, a message
//! holding one, or a path is printed, its control characters (C0 with NUL, CR and LF; DEL; C1
//! with ESC's 8-bit CSI) are shown escaped as Rust's `escape_debug` shows them (`\n`, `\r`,
//! `\0`, `\u{1b}`), so a model cannot clear the screen, move the cursor or fake a line of the
//! report. Every other character, non-ASCII letters included, is printed as it is. JSON needs
//! none of this: serde escapes control characters itself.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

/// `text` with every control character escaped; borrowed when there is none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// A path as [`printable`] shows it (lossy for bytes that are not UTF-8, like `Path::display`).
pub fn printable_path(path: &Path) -> String {
    printable(&path.display().to_string()).into_owned()
}

/// Formats its text through [`printable`]: `format!("{}", Shown(name))`.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&printable(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else() {
        assert_eq!(printable("conv1/weight"), "conv1/weight");
        assert!(matches!(printable("ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}[2J\u{1b}[Hb\nwrote x\r\0\u{7f}\u{9b}"),
            "a\\u{1b}[2J\\u{1b}[Hb\\nwrote x\\r\\0\\u{7f}\\u{9b}"
        );
        assert_eq!(printable("tab\there"), "tab\\there");
    }

    #[test]
    fn shown_pads_like_a_str() {
        assert_eq!(format!("[{:<6}]", Shown("a\nb")), "[a\\nb  ]");
    }
}
