//! What the launcher commands share: the `-o table|json` choice and lab ages.

use clap::ValueEnum;

/// Output format of `list`, `status` and `reach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// An age as kubectl prints one: `45s`, `3m`, `5h`, `2d`.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages_read_like_kubectl() {
        let shown: Vec<String> = [0, 59, 119, 120, 7199, 7200, 172_799, 172_800]
            .into_iter()
            .map(super::age)
            .collect();
        assert_eq!(
            shown,
            ["0s", "59s", "119s", "2m", "119m", "2h", "47h", "2d"]
        );
    }
}
