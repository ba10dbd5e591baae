//! ISO 6346 freight container identification: owner code, category, serial, check digit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A container id whose ISO 6346 check digit has been verified, e.g. `MSCU1234566`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerIdError {
    #[error("{0:?} is not an ISO 6346 container id: expected 4 letters (owner code + U/J/Z/R) then 7 digits, like MSCU1234566")]
    Format(String),
    #[error("{id:?} has check digit {found}, but ISO 6346 gives {expected}: the id is mistyped or misread")]
    CheckDigit {
        id: String,
        found: u32,
        expected: u32,
    },
}

impl ContainerId {
    pub fn parse(s: &str) -> Result<Self, ContainerIdError> {
        // Scanners' OCR and manifests write ids with spaces or dashes ("MSCU 123456-6").
        let id: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let b = id.as_bytes();
        if b.len() != 11
            || !b[..4].iter().all(u8::is_ascii_uppercase)
            || !matches!(b[3], b'U' | b'J' | b'Z' | b'R')
            || !b[4..].iter().all(u8::is_ascii_digit)
        {
            return Err(ContainerIdError::Format(s.to_string()));
        }
        let expected = check_digit(&id[..10]);
        let found = u32::from(b[10] - b'0');
        if found != expected {
            return Err(ContainerIdError::CheckDigit {
                id: s.to_string(),
                found,
                expected,
            });
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// ISO 6346 check digit of the first 10 characters (owner code, category, serial).
pub fn check_digit(first10: &str) -> u32 {
    let sum: u32 = first10
        .bytes()
        .enumerate()
        .map(|(i, c)| letter_value(c) * (1 << i))
        .sum();
    sum % 11 % 10
}

/// Letters skip multiples of 11 (A=10, B=12, ..., K=21, L=23, ...).
fn letter_value(c: u8) -> u32 {
    if c.is_ascii_digit() {
        return u32::from(c - b'0');
    }
    let mut v = 10;
    let mut l = b'A';
    while l < c {
        v += 1;
        if v % 11 == 0 {
            v += 1;
        }
        l += 1;
    }
    v
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ContainerId {
    type Error = ContainerIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ContainerId> for String {
    fn from(c: ContainerId) -> String {
        c.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_good_ids() {
        // CSQU3054383 is the worked example of ISO 6346; MSCU1234566 is DESIGN.md's.
        assert_eq!(check_digit("CSQU305438"), 3);
        assert_eq!(check_digit("MSCU123456"), 6);
        assert_eq!(
            ContainerId::parse("CSQU3054383").unwrap().as_str(),
            "CSQU3054383"
        );
        assert_eq!(
            ContainerId::parse("mscu 123456-6").unwrap().as_str(),
            "MSCU1234566"
        );
    }

    #[test]
    fn letter_values_skip_multiples_of_eleven() {
        assert_eq!(letter_value(b'A'), 10);
        assert_eq!(letter_value(b'B'), 12);
        assert_eq!(letter_value(b'K'), 21);
        assert_eq!(letter_value(b'L'), 23);
        assert_eq!(letter_value(b'U'), 32);
        assert_eq!(letter_value(b'V'), 34);
        assert_eq!(letter_value(b'Z'), 38);
    }

    #[test]
    fn bad_ids() {
        assert!(matches!(
            ContainerId::parse("CSQU3054384"),
            Err(ContainerIdError::CheckDigit {
                expected: 3,
                found: 4,
                ..
            })
        ));
        assert!(matches!(
            ContainerId::parse("CSQX3054383"),
            Err(ContainerIdError::Format(_))
        ));
        assert!(matches!(
            ContainerId::parse("CSQU305438"),
            Err(ContainerIdError::Format(_))
        ));
        assert!(matches!(
            ContainerId::parse(""),
            Err(ContainerIdError::Format(_))
        ));
    }
}
