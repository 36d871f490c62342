//! Lab names. A lab name becomes a directory under kemu's state root and the prefix of every
//! namespace, so it is checked by one rule, here, wherever it comes from: a topology file,
//! `--name`, or the argument of any command that names a lab (`down`, `status`, `exec` ...).
//! Only a [`LabName`] can build a state path (`LabDir::new`), so no unchecked text ever
//! reaches the file system.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest lab name: it prefixes every namespace (`kemu-<lab>-<host>`) and ownership mark.
pub const MAX_LAB_NAME: usize = 32;

/// A lab name that passed [`lab_name_problem`]: 1 to 32 lowercase ASCII letters, digits and
/// '-', starting and ending with a letter or digit (a DNS label). Such a name cannot be empty,
/// `.` or `..`, hold a `/`, a NUL or a newline, or look like another name in Unicode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    /// Check `name`; the error says what is wrong with it.
    pub fn parse(name: &str) -> Result<LabName, LabNameError> {
        match lab_name_problem(name) {
            None => Ok(LabName(name.to_string())),
            Some(problem) => Err(LabNameError(problem)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a text is not a lab name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LabNameError(pub String);

/// What is wrong with `name` as a lab name, or `None` when it is a good one.
pub fn lab_name_problem(name: &str) -> Option<String> {
    // `{:?}` escapes control characters, so the message itself stays on one line.
    let chars = name.chars().count();
    if name.is_empty() {
        return Some("a lab name cannot be empty".to_string());
    }
    if chars > MAX_LAB_NAME {
        return Some(format!(
            "lab name {:?} is {chars} characters long; the limit is {MAX_LAB_NAME} because it prefixes every namespace name (kemu-<lab>-<host>)",
            shorten(name)
        ));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        return Some(format!(
            "lab name {name:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    None
}

/// The first characters of a long name, for messages.
fn shorten(name: &str) -> String {
    let mut short: String = name.chars().take(40).collect();
    if short.len() < name.len() {
        short.push('…');
    }
    short
}

impl FromStr for LabName {
    type Err = LabNameError;
    fn from_str(s: &str) -> Result<LabName, LabNameError> {
        LabName::parse(s)
    }
}

impl TryFrom<String> for LabName {
    type Error = LabNameError;
    fn try_from(s: String) -> Result<LabName, LabNameError> {
        LabName::parse(&s)
    }
}

impl From<LabName> for String {
    fn from(name: LabName) -> String {
        name.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for LabName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for LabName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names a careless or hostile user may type. Every one is refused before anything
    /// touches the file system.
    pub const HOSTILE: &[&str] = &[
        "",
        ".",
        "..",
        "/",
        "//",
        "/etc",
        "/run/kemu",
        "a/b",
        "../x",
        "../../some/dir",
        "./seed",
        "seed/",
        "seed/..",
        "seed\0",
        "se\0ed",
        "seed\n",
        "seed\nx",
        " seed",
        "seed ",
        "*",
        "~",
        "~root",
        "$HOME",
        "-rf",
        "-",
        "seed-",
        "Seed",
        "SEED",
        "seеd",          // Cyrillic 'е'
        "ѕeed",          // Cyrillic 'ѕ'
        "seed\u{200b}",  // zero-width space
        "seed\u{2215}x", // division slash
        "seed\u{ff0f}x", // fullwidth solidus
        "séed",
        "seed.lab",
        "seed_lab",
        "a\\b",
        "%2e%2e",
    ];

    #[test]
    fn hostile_names_are_refused() {
        for name in HOSTILE {
            assert!(LabName::parse(name).is_err(), "{name:?} was accepted");
        }
        let long = "a".repeat(300);
        let err = LabName::parse(&long).unwrap_err().to_string();
        assert!(err.contains("300 characters"), "{err}");
        assert!(err.len() < 200, "the message quotes the whole name: {err}");
        assert!(LabName::parse(&"a".repeat(33)).is_err());
    }

    #[test]
    fn messages_stay_on_one_line() {
        for name in HOSTILE {
            let err = LabName::parse(name).unwrap_err().to_string();
            assert!(!err.contains('\n') && !err.contains('\0'), "{err:?}");
        }
    }

    #[test]
    fn good_names_are_accepted() {
        for name in ["seed", "e2e-iptables", "a", "0", "lab-1x2", &"a".repeat(32)] {
            assert_eq!(LabName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn deserializing_checks_the_name() {
        assert!(serde_json::from_str::<LabName>("\"seed\"").is_ok());
        assert!(serde_json::from_str::<LabName>("\"../etc\"").is_err());
    }
}
