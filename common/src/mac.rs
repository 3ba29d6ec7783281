//! MAC addresses. Operators paste them as `aa:bb:..`, `AA-BB-..`, `aabb.ccdd.eeff` or `aabbccddeeff`;
//! Ingot accepts all of these and stores and prints one form: lowercase, colon-separated.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a MAC address (expected 6 hex octets such as 52:54:00:12:34:56)")]
pub struct MacParseError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_string(),
        };
        let hex: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        let seps = s
            .trim()
            .chars()
            .filter(|c| matches!(c, ':' | '-' | '.'))
            .count();
        if hex.len() != 12
            || !hex.chars().all(|c| c.is_ascii_hexdigit())
            || !matches!(seps, 0 | 2 | 5)
        {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_common_notations() {
        for s in [
            "52:54:00:AB:cd:01",
            "52-54-00-ab-cd-01",
            "5254.00ab.cd01",
            "525400abcd01",
        ] {
            assert_eq!(
                s.parse::<Mac>().unwrap().to_string(),
                "52:54:00:ab:cd:01",
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:01:02",
            "5:2:5:4:0:0:a:b:c:d:0:1",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(b in any::<[u8; 6]>()) {
            let m = Mac(b);
            prop_assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
        }
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = s.parse::<Mac>();
        }
    }
}
