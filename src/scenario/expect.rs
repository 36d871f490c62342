//! Expectations of scenario steps, and their evaluation: pure.

use serde::Deserialize;

/// A number a count must meet: `20` (exactly), `">=19"`, `">0"`, `"<=1"`, `"<1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub op: Op,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ge,
    Gt,
    Le,
    Lt,
}

impl Count {
    pub fn parse(text: &str) -> Result<Count, String> {
        let t = text.trim();
        let (op, rest) = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .iter()
        .find_map(|(p, op)| t.strip_prefix(p).map(|r| (*op, r)))
        .unwrap_or((Op::Eq, t));
        let value = rest
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a count such as 20, \">=19\" or \"<1\""))?;
        Ok(Count { op, value })
    }

    pub fn holds(&self, n: u64) -> bool {
        match self.op {
            Op::Eq => n == self.value,
            Op::Ge => n >= self.value,
            Op::Gt => n > self.value,
            Op::Le => n <= self.value,
            Op::Lt => n < self.value,
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            Op::Eq => "",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Lt => "<",
        };
        write!(f, "{op}{}", self.value)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Count {
                op: Op::Eq,
                value: n,
            }),
            Raw::S(s) => Count::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// What a command's result must be.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputExpect {
    /// Exit status (default: 0).
    #[serde(default)]
    pub exit: Option<i32>,
    /// Text the output (stdout and stderr) must contain.
    #[serde(default)]
    pub contains: Vec<String>,
    /// Text it must not contain.
    #[serde(default)]
    pub lacks: Vec<String>,
}

impl OutputExpect {
    /// Why `status`/`output` do not meet the expectation, if they do not.
    pub fn check(&self, status: Option<i32>, output: &str) -> Option<String> {
        let want = self.exit.unwrap_or(0);
        if status != Some(want) {
            return Some(format!(
                "exit status {} (expected {want}); output:\n{}",
                status.map_or("none (killed)".to_string(), |s| s.to_string()),
                tail(output)
            ));
        }
        if let Some(missing) = self.contains.iter().find(|c| !output.contains(c.as_str())) {
            return Some(format!("output lacks {missing:?}:\n{}", tail(output)));
        }
        if let Some(found) = self.lacks.iter().find(|c| output.contains(c.as_str())) {
            return Some(format!("output contains {found:?}:\n{}", tail(output)));
        }
        None
    }
}

/// The last lines of an output, for reports.
pub fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let from = lines.len().saturating_sub(20);
    lines[from..].join("\n")
}

/// The outcome of one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowResult {
    /// Answered; the answer's text (trimmed, at most a line).
    Ok(String),
    Failed(String),
}

/// Why a traffic step's results miss its expectation, if they do.
pub fn check_traffic(expect: &super::TrafficExpect, results: &[FlowResult]) -> Option<String> {
    let ok: Vec<&str> = results
        .iter()
        .filter_map(|r| match r {
            FlowResult::Ok(a) => Some(a.as_str()),
            FlowResult::Failed(_) => None,
        })
        .collect();
    let summary = || summarize(results);
    if let Some(count) = &expect.ok
        && !count.holds(ok.len() as u64)
    {
        return Some(format!(
            "{} of {} flows succeeded (expected {count}): {}",
            ok.len(),
            results.len(),
            summary()
        ));
    }
    if let Some(text) = &expect.answers_contain
        && let Some(a) = ok.iter().find(|a| !a.contains(text.as_str()))
    {
        return Some(format!("an answer lacks {text:?}: {a:?} ({})", summary()));
    }
    if let Some(text) = &expect.answers_lack
        && let Some(a) = ok.iter().find(|a| a.contains(text.as_str()))
    {
        return Some(format!(
            "an answer contains {text:?}: {a:?} ({})",
            summary()
        ));
    }
    None
}

/// `3 ok (web-1 x2, web-2), 1 failed (timed out)`.
pub fn summarize(results: &[FlowResult]) -> String {
    let mut answers: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut failures: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in results {
        match r {
            FlowResult::Ok(a) => *answers.entry(a.as_str()).or_default() += 1,
            FlowResult::Failed(e) => *failures.entry(e.as_str()).or_default() += 1,
        }
    }
    let list = |m: &std::collections::BTreeMap<&str, usize>| {
        m.iter()
            .map(|(k, n)| {
                if *n > 1 {
                    format!("{k} x{n}")
                } else {
                    k.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ok: usize = answers.values().sum();
    let failed: usize = failures.values().sum();
    let mut out = format!("{ok} ok");
    if ok > 0 {
        out.push_str(&format!(" ({})", list(&answers)));
    }
    if failed > 0 {
        out.push_str(&format!(", {failed} failed ({})", list(&failures)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let c = |t: &str| Count::parse(t).unwrap();
        assert!(c("20").holds(20) && !c("20").holds(19));
        assert!(c(">=19").holds(19) && !c(">=19").holds(18));
        assert!(c("<1").holds(0) && !c("<1").holds(1));
        assert!(c("> 0").holds(1));
        assert!(Count::parse("lots").is_err());
        assert_eq!(c(">=19").to_string(), ">=19");
    }

    #[test]
    fn traffic_and_output_expectations_explain_themselves() {
        let results = vec![
            FlowResult::Ok("web-1".into()),
            FlowResult::Ok("web-1".into()),
            FlowResult::Failed("timed out".into()),
        ];
        let expect = crate::scenario::TrafficExpect {
            ok: Some(Count::parse("3").unwrap()),
            ..Default::default()
        };
        assert_eq!(
            check_traffic(&expect, &results).unwrap(),
            "2 of 3 flows succeeded (expected 3): 2 ok (web-1 x2), 1 failed (timed out)"
        );
        let expect = crate::scenario::TrafficExpect {
            answers_lack: Some("web-1".into()),
            ..Default::default()
        };
        assert!(
            check_traffic(&expect, &results)
                .unwrap()
                .contains("an answer contains \"web-1\"")
        );
        let out = OutputExpect {
            contains: vec!["Running".into()],
            ..Default::default()
        };
        assert!(out.check(Some(0), "pod/web Running").is_none());
        assert!(
            out.check(Some(1), "x")
                .unwrap()
                .starts_with("exit status 1 (expected 0)")
        );
        assert!(
            out.check(Some(0), "Pending")
                .unwrap()
                .starts_with("output lacks \"Running\"")
        );
    }
}
