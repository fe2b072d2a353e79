//! Offending values in error messages, kept small. A policy file (or a flag) may hold a string
//! of megabytes; an error that echoes it whole is as big, and a message that echoes it twice
//! (ours around a parser's) twice as big — 16 MiB for an 8 MiB string, seen in review.

/// How many characters of an offending value an error quotes: every valid CIDR and most domain
/// names whole, and enough of anything longer to find it in the file (whose place the error
/// names anyway).
pub const QUOTED_CHARS: usize = 100;

/// How many characters of another library's message (the TOML parser, ipnetwork) are kept at
/// each end when it is too long: such messages quote the value in the middle and say what was
/// expected at the end (``unknown variant `…`, expected `observe` or `enforce` ``).
const MESSAGE_END_CHARS: usize = QUOTED_CHARS;

/// `value` in backticks; if longer than [`QUOTED_CHARS`] characters, its start (cut on a
/// character boundary), an ellipsis and its whole length: `` `aaaa…` (8388608 bytes) ``.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        None => format!("`{value}`"),
        Some((cut, _)) => format!("`{}…` ({} bytes)", &value[..cut], value.len()),
    }
}

/// A message from another library that may echo a value whole: kept as it is up to twice
/// [`MESSAGE_END_CHARS`] characters, else its start and its end around what was left out.
pub fn clip(message: &str) -> String {
    let chars = message.chars().count();
    if chars <= 2 * MESSAGE_END_CHARS {
        return message.to_owned();
    }
    let head = message
        .char_indices()
        .nth(MESSAGE_END_CHARS)
        .map_or(message.len(), |(at, _)| at);
    let tail = message
        .char_indices()
        .nth(chars - MESSAGE_END_CHARS)
        .map_or(message.len(), |(at, _)| at);
    format!(
        "{}… ({} bytes left out) …{}",
        &message[..head],
        tail - head,
        &message[tail..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quote("10.0.0.0/33"), "`10.0.0.0/33`");
        assert_eq!(quote(""), "``");
        let exactly = "a".repeat(QUOTED_CHARS);
        assert_eq!(quote(&exactly), format!("`{exactly}`"));
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_with_their_length() {
        let long = "a".repeat(8 << 20);
        assert_eq!(
            quote(&long),
            format!("`{}…` (8388608 bytes)", "a".repeat(QUOTED_CHARS))
        );
        // Two-byte characters: the cut falls after 100 of them, never inside one.
        let wide = "é".repeat(QUOTED_CHARS + 1);
        assert_eq!(
            quote(&wide),
            format!("`{}…` (202 bytes)", "é".repeat(QUOTED_CHARS))
        );
    }

    #[test]
    fn long_messages_keep_their_start_and_end() {
        assert_eq!(clip("invalid prefix"), "invalid prefix");
        let message = format!(
            "unknown variant `{}`, expected `observe` or `enforce`",
            "x".repeat(8 << 20)
        );
        let clipped = clip(&message);
        assert!(clipped.len() < 1024, "{}", clipped.len());
        assert!(clipped.starts_with("unknown variant `xxx"), "{clipped}");
        assert!(
            clipped.ends_with("xxx`, expected `observe` or `enforce`"),
            "{clipped}"
        );
        assert!(
            clipped.contains(&format!("… ({} bytes left out) …", message.len() - 200)),
            "{clipped}"
        );
        let wide = "é".repeat(1000);
        assert_eq!(clip(&wide).chars().filter(|&c| c == 'é').count(), 200);
    }
}
