//! One exit-code convention for every command (README, "Exit codes"):
//! 0 done; 1 failed, or an expectation not met (`reach --expect`); 2 a usage or configuration
//! error (clap's own errors are 2 as well); 3 the lab named (or any lab) is not up.
//! Errors carry their kind as a typed error somewhere in their chain; [`code_of`] finds it.

use std::process::ExitCode;

pub const OK: u8 = 0;
pub const FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const LAB_NOT_FOUND: u8 = 3;

/// The convention as the README states it, one line per code (a test compares the two).
pub const CONVENTION: &[(u8, &str)] = &[
    (OK, "done"),
    (
        FAILED,
        "failed, or an expectation not met (`reach --expect`: the matrix differs; `run`: a step of the scenario)",
    ),
    (
        USAGE,
        "a usage or configuration error: an unknown flag, a bad lab name, a topology file that does not parse, an impossible request (checked before anything is touched)",
    ),
    (
        LAB_NOT_FOUND,
        "the lab is not up (or no lab is, when none is named)",
    ),
];

/// A usage or configuration error: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `anyhow::Error` of a [`UsageError`].
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// The exit code of a command that failed with `err`.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<crate::lab::state::LabNotFound>() {
            return LAB_NOT_FOUND;
        }
        if cause.is::<UsageError>()
            || cause.is::<crate::topology::TopologyError>()
            || cause.is::<crate::topology::LabNameError>()
            || cause.is::<crate::lab::state::NoSuchHost>()
        {
            return USAGE;
        }
    }
    FAILED
}

/// [`code_of`] as an `ExitCode`.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(code_of(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_kind_is_found_anywhere_in_the_chain() {
        let lab = crate::topology::LabName::parse("seed").unwrap();
        let not_found =
            anyhow::Error::from(crate::lab::state::LabNotFound::Named(lab)).context("open the lab");
        assert_eq!(code_of(&not_found), LAB_NOT_FOUND);
        let bad = usage("--segments 3 is more than --hosts 2").context("generate");
        assert_eq!(code_of(&bad), USAGE);
        let other: anyhow::Result<()> = Err(std::io::Error::other("boom")).context("write");
        assert_eq!(code_of(&other.unwrap_err()), FAILED);
    }
}
