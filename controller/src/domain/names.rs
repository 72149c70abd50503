//! Names and ids that are easy to swap when they are all strings: a pipeline's name where a
//! stage's was meant, a digest where a sha was. Each is its own type.
//!
//! Owns the newtypes. Each reads as `&str` (`Deref`), prints as itself, compares with string
//! literals, and is stored and serialised as a plain string. Must never: validate (that is the
//! configuration's and the intake's job, where the error can name the input) or allocate
//! beyond the string itself.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                Self(s.clone())
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

name!(
    /// A pipeline's name, as `stages.toml` gives it.
    PipelineName
);
name!(
    /// A stage's name within its pipeline (`beta`, `prod`).
    StageName
);
name!(
    /// An effect's idempotency key: `pipeline/r12/stage/a1/deploy-0`. Written once from the
    /// effect's kind and place, never read back for facts.
    EffectKey
);
name!(
    /// A git commit sha (40 hex characters from GitHub).
    CommitSha
);
name!(
    /// An image digest: `sha256:` and 64 hex characters.
    Digest
);
name!(
    /// A 12-digit AWS account id.
    AccountId
);
name!(
    /// An Amazon Resource Name (a role, a topic, an alarm).
    Arn
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reads_compares_and_serialises_as_its_string() {
        let s = StageName::from("prod");
        assert_eq!(s, "prod");
        assert_eq!("prod", s);
        assert_eq!(s.len(), 4);
        assert_eq!(format!("{s}"), "prod");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"prod\"");
        let back: StageName = serde_json::from_str("\"prod\"").unwrap();
        assert_eq!(back, s);
        let map = std::collections::BTreeMap::from([(s.clone(), 1)]);
        assert_eq!(map.get("prod"), Some(&1));
    }
}
