//! Enums spelled as lowercase words on the wire, on the command line and in messages.

/// What [`words!`] gives an enum, for code generic over such enums (the command line lists
/// the words).
pub trait Words: Copy + Sized + 'static {
    /// Every variant, in declaration order.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

/// Declares an enum whose variants are spelled as the given words: `as_str`, `ALL`,
/// `Display`, `FromStr` (an unknown word is an error naming the allowed ones), and serde as
/// those words.
///
/// ```
/// egress_monitor_api::words! {
///     /// A hook.
///     pub enum Hook { Cgroup = "cgroup", Tc = "tc" }
/// }
/// assert_eq!("tc".parse::<Hook>(), Ok(Hook::Tc));
/// assert_eq!(Hook::Cgroup.to_string(), "cgroup");
/// ```
#[macro_export]
macro_rules! words {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl $crate::Words for $name {
            const ALL: &'static [$name] = $name::ALL;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<$name, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| {
                        let words: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                        format!("{} is not one of {}", $crate::words::quote(text), words.join(", "))
                    })
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = <::std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

/// `text` in backticks, cut short (on a character boundary) when longer than 100 characters:
/// an offending value of megabytes must not make an error as big.
#[doc(hidden)]
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(100) {
        None => format!("`{text}`"),
        Some((cut, _)) => format!("`{}…` ({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    words! {
        /// Test words.
        enum Fruit { Apple = "apple", Pear = "pear" }
    }

    #[test]
    fn words_read_and_write_as_spelled() {
        for fruit in Fruit::ALL {
            assert_eq!(fruit.as_str().parse::<Fruit>(), Ok(*fruit));
            assert_eq!(
                serde_json::to_string(fruit).unwrap(),
                format!("\"{fruit}\"")
            );
            assert_eq!(
                serde_json::from_str::<Fruit>(&format!("\"{fruit}\"")).unwrap(),
                *fruit
            );
        }
        assert_eq!(
            "Apple".parse::<Fruit>(),
            Err("`Apple` is not one of apple, pear".to_owned())
        );
        let long = "x".repeat(1 << 20);
        let message = long.parse::<Fruit>().unwrap_err();
        assert!(message.len() < 200, "{message}");
        assert!(
            message.ends_with("…` (1048576 bytes) is not one of apple, pear"),
            "{message}"
        );
        let err = serde_json::from_str::<Fruit>("\"plum\"").unwrap_err();
        assert!(
            err.to_string().contains("`plum` is not one of apple, pear"),
            "{err}"
        );
    }
}
