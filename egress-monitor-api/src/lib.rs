//! What the node and the fleet controller say to each other, and the small vocabulary both
//! products share. Serde only: no HTTP, database, kernel or policy-file code lives here, so
//! either side can depend on it without carrying the other.
//!
//! - [`wire`]: the JSON API's types and their validation (reports, fleet policy, history).
//! - [`Mode`]: observe or enforce, as policy files, the command line and the API spell it.
//! - [`time`]: milliseconds since the epoch and RFC 3339, the one time format of the API.
//! - [`error_line`]: an error and its causes on one line, as logs and API errors show them.
//! - [`words!`]: enums spelled as lowercase words (on the wire, the command line, in messages).

mod mode;
pub mod time;
pub mod wire;
pub mod words;

pub use self::{mode::Mode, words::Words};

/// An error and its causes on one line: `outer: inner: root`. A cause whose text the outer
/// message already ends with (a wrapper that prints its source) is not repeated.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{error::Error, fmt, io};

    #[derive(Debug)]
    struct Outer(io::Error, bool);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.1 {
                write!(f, "cannot open the spool: {}", self.0)
            } else {
                f.write_str("cannot open the spool")
            }
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_follow_on_one_line_and_are_not_repeated() {
        let root = || io::Error::new(io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            super::error_line(&Outer(root(), false)),
            "cannot open the spool: no such file"
        );
        assert_eq!(
            super::error_line(&Outer(root(), true)),
            "cannot open the spool: no such file"
        );
    }
}
