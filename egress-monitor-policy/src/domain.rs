//! Domain rules: `domain = "*.blob.core.windows.net"` in a `[[rule]]`. The kernel reads the
//! answers to a process's DNS queries and, when the question matches an allow rule, allows the
//! answer's addresses until their TTL (plus a grace period) runs out.
//!
//! `example.com` matches that name only; `*.example.com` matches every name below it (any
//! depth) but not `example.com` itself. The most specific matching rule wins. Names compare
//! without regard to ASCII case.

use std::fmt;

use super::{Action, Origin, quote};

/// A validated domain pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain {
    /// Lowercase, without the `*.` and without a trailing dot.
    pub name: String,
    /// `*.name`: the names below `name`.
    pub subdomains: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRule {
    pub name: String,
    pub domain: Domain,
    pub action: Action,
    pub origin: Origin,
}

impl Domain {
    /// Parses `name` or `*.name`. Labels are 1 to 63 letters, digits, `-` or `_`, not starting
    /// or ending with `-`; the name is at most 253 characters and has at least two labels (a
    /// rule for a whole top-level domain is almost certainly a mistake, and a wide open door).
    pub fn parse(text: &str) -> Result<Domain, String> {
        let trimmed = text.trim();
        let (subdomains, rest) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let name = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
        let invalid = |why: &str| Err(format!("{} is not a valid domain: {why}", quote(text)));
        if name.contains('*') {
            return invalid("`*` may only be the whole first label, as in `*.example.com`");
        }
        if name.is_empty() || name.len() > 253 {
            return invalid("a name has 1 to 253 characters");
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return invalid("name at least a second-level domain, such as `example.com`");
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return invalid("each label has 1 to 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return invalid(&format!(
                    "label {} may hold only letters, digits, `-` and `_` (write international names in their xn-- form)",
                    quote(label)
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return invalid(&format!("label {} starts or ends with `-`", quote(label)));
            }
        }
        Ok(Domain { name, subdomains })
    }

    /// The name in DNS wire format: what the kernel hashes.
    pub fn wire(&self) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.name.len() + 2);
        for label in self.name.split('.') {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        wire
    }

    /// Whether `name` (dotted, any case) matches, as the kernel decides.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if self.subdomains {
            name.strip_suffix(&self.name)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        } else {
            name == self.name
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_fold_case_and_match_like_the_kernel() {
        let blob = Domain::parse("*.Blob.Core.Windows.NET.").unwrap();
        assert_eq!(blob.to_string(), "*.blob.core.windows.net");
        assert!(blob.matches("acct.blob.core.windows.net"));
        assert!(blob.matches("a.b.BLOB.core.windows.net"));
        assert!(
            !blob.matches("blob.core.windows.net"),
            "not the name itself"
        );
        assert!(
            !blob.matches("evilblob.core.windows.net"),
            "labels, not text"
        );
        let exact = Domain::parse("example.com").unwrap();
        assert!(exact.matches("EXAMPLE.com.") && !exact.matches("www.example.com"));
        assert_eq!(exact.wire(), b"\x07example\x03com\x00");
    }

    #[test]
    fn bad_patterns_say_why() {
        for (text, why) in [
            ("com", "second-level"),
            ("*.com", "second-level"),
            ("a.*.com", "`*` may only be"),
            ("exa mple.com", "only letters"),
            ("-bad.com", "starts or ends"),
            ("", "1 to 253"),
        ] {
            let err = Domain::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(Domain::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }
}
