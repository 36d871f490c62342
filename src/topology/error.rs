//! Topology errors that point at the file, line, column and field, with the offending line
//! quoted, the way a compiler reports a bad source file.

use std::fmt;

use serde_saphyr::Location;

/// One problem in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// Field path such as `hosts[2].ip`.
    pub field: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Problem {
    pub fn at(location: Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            line: location.line() as u32,
            column: location.column() as u32,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one topology file (parsing stops at the first; validation collects all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// File name as given on the command line.
    pub file: String,
    /// Contents, for quoting the offending lines.
    pub source: String,
    pub problems: Vec<Problem>,
}

impl std::error::Error for TopologyError {}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.source.lines().collect();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                write!(f, "{}: {}: {}", self.file, p.field, p.message)?;
                continue;
            }
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, p.line, p.column, p.field, p.message
            )?;
            if let Some(text) = lines.get(p.line as usize - 1) {
                let number = p.line.to_string();
                let pad = " ".repeat(number.len());
                let caret = " ".repeat(p.column.saturating_sub(1) as usize);
                write!(f, "\n{pad} |\n{number} | {text}\n{pad} | {caret}^")?;
            }
        }
        if self.problems.len() > 1 {
            write!(f, "\n{} problems in {}", self.problems.len(), self.file)?;
        }
        Ok(())
    }
}
