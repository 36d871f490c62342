//! What a link fault asks for, parsed from the command line (pure): rates as tc writes them
//! (`10mbit`), delays with an optional jitter (`100ms±10ms`), percentages (`2.5%`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A probability in hundredths of a percent (0..=10000), so that nft can draw it as
/// `numgen random mod 10000 < N` and the state file stays exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Percent(pub u32);

impl Percent {
    pub const SCALE: u32 = 10_000;

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The probability as a fraction of 1.
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / f64::from(Self::SCALE)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}%"),
            _ if frac.is_multiple_of(10) => write!(f, "{whole}.{}%", frac / 10),
            _ => write!(f, "{whole}.{frac:02}%"),
        }
    }
}

/// `5%`, `0.5%`, `12.25` (the `%` is optional); at most two decimals, at most 100.
pub fn parse_percent(text: &str) -> Result<Percent, String> {
    let bad = || format!("{text:?} is not a percentage such as 5%, 0.5% or 100%");
    let num = text.trim().trim_end_matches('%');
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() || frac.len() > 2 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let value = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)?;
    if value > Percent::SCALE {
        return Err(format!("{text:?} is more than 100%"));
    }
    Ok(Percent(value))
}

/// A rate in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate(pub u64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.0;
        for (unit, scale) in [
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ] {
            if bits >= scale && bits.is_multiple_of(scale) {
                return write!(f, "{}{unit}", bits / scale);
            }
        }
        write!(f, "{bits}bit")
    }
}

/// tc's rate units: `bit`, `kbit`, `mbit`, `gbit` (bits per second, powers of 1000) and
/// `bps`, `kbps`, `mbps`, `gbps` (bytes per second). A bare number is bits per second.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || format!("{text:?} is not a rate such as 10mbit, 500kbit or 1gbit");
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "" | "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "bps" => 8,
        "kbps" => 8_000,
        "mbps" => 8_000_000,
        "gbps" => 8_000_000_000,
        _ => return Err(bad()),
    };
    let bits = num.checked_mul(scale).ok_or_else(bad)?;
    // tbf's rate is a 64-bit byte count, but below 8 kbit a single full-size frame takes
    // more than a second: surely a typo.
    if bits < 8_000 {
        return Err(format!("{text:?} is below 8kbit"));
    }
    Ok(Rate(bits))
}

/// A delay and its jitter: each packet waits `base ± jitter` (uniformly drawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delay {
    #[serde(with = "micros")]
    pub base: Duration,
    #[serde(with = "micros", default, skip_serializing_if = "Duration::is_zero")]
    pub jitter: Duration,
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", show_duration(self.base))?;
        if !self.jitter.is_zero() {
            write!(f, "±{}", show_duration(self.jitter))?;
        }
        Ok(())
    }
}

fn show_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// `100ms`, `100ms±10ms` or `100ms+-10ms` (for keyboards without `±`); `us`, `ms`, `s`.
pub fn parse_delay(text: &str) -> Result<Delay, String> {
    let (base, jitter) = match text.split_once('±').or_else(|| text.split_once("+-")) {
        Some((b, j)) => (b, Some(j)),
        None => (text, None),
    };
    let base = parse_short_duration(base)?;
    let jitter = jitter
        .map(parse_short_duration)
        .transpose()?
        .unwrap_or_default();
    if jitter > base {
        return Err(format!(
            "{text:?}: the jitter is larger than the delay (a packet cannot leave before it was sent)"
        ));
    }
    if base > Duration::from_secs(60) {
        return Err(format!("{text:?}: a delay above 60s is surely a typo"));
    }
    Ok(Delay { base, jitter })
}

/// `250us`, `10ms`, `1.5ms`, `2s`.
fn parse_short_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 10ms, 250us or 1s");
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let micros = match unit {
        "us" | "µs" => num,
        "ms" => num * 1e3,
        "s" => num * 1e6,
        _ => return Err(bad()),
    };
    if !micros.is_finite() || micros < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_micros(micros.round() as u64))
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

/// The impairments of one link's egress. Every field is optional: `kemu link` merges what is
/// given into what the link already has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Impairment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<Percent>,
}

impl Impairment {
    /// `self` with every field that `other` sets replaced; zero values remove a field
    /// (`--loss 0%`, `--delay 0ms`).
    pub fn merged(&self, other: &Impairment) -> Impairment {
        let pct = |new: Option<Percent>, old: Option<Percent>| match new {
            Some(p) if p.is_zero() => None,
            Some(p) => Some(p),
            None => old,
        };
        Impairment {
            rate: other.rate.or(self.rate),
            delay: match other.delay {
                Some(d) if d.base.is_zero() => None,
                Some(d) => Some(d),
                None => self.delay,
            },
            loss: pct(other.loss, self.loss),
            duplicate: pct(other.duplicate, self.duplicate),
            reorder: pct(other.reorder, self.reorder),
            corrupt: pct(other.corrupt, self.corrupt),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Impairment::default()
    }

    /// What no engine can do: reordering needs a delay to reorder against (as with netem).
    pub fn check(&self) -> Result<(), String> {
        if self.reorder.is_some() && self.delay.is_none() {
            return Err(
                "--reorder needs a --delay: reordered packets are the ones sent without it".into(),
            );
        }
        Ok(())
    }

    /// Whether packets must pass through a delay line (netem, or kemu's NFQUEUE engine).
    pub fn needs_delay_line(&self) -> bool {
        self.delay.is_some() || self.duplicate.is_some() || self.reorder.is_some()
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(r) = self.rate {
            parts.push(format!("rate {r}"));
        }
        if let Some(d) = self.delay {
            parts.push(format!("delay {d}"));
        }
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if let Some(p) = p {
                parts.push(format!("{name} {p}"));
            }
        }
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_parse_exactly_and_print_back() {
        for (text, hundredths, shown) in [
            ("5%", 500, "5%"),
            ("0.5%", 50, "0.5%"),
            ("12.25", 1225, "12.25%"),
            ("100%", 10_000, "100%"),
            ("0%", 0, "0%"),
        ] {
            let p = parse_percent(text).unwrap();
            assert_eq!(p, Percent(hundredths), "{text}");
            assert_eq!(p.to_string(), shown);
        }
        for bad in ["", "%", "-1%", "101%", "1.234%", "x%", "1.%x", ".5%"] {
            assert!(parse_percent(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn rates_use_tc_units() {
        assert_eq!(parse_rate("10mbit"), Ok(Rate(10_000_000)));
        assert_eq!(parse_rate("1Gbit"), Ok(Rate(1_000_000_000)));
        assert_eq!(parse_rate("500kbit"), Ok(Rate(500_000)));
        assert_eq!(parse_rate("1mbps"), Ok(Rate(8_000_000)));
        assert_eq!(Rate(10_000_000).to_string(), "10mbit");
        assert_eq!(Rate(1_500_000).to_string(), "1500kbit");
        assert!(parse_rate("10 furlongs").is_err());
        assert!(parse_rate("100bit").is_err());
        assert!(parse_rate("mbit").is_err());
    }

    #[test]
    fn delays_take_an_optional_jitter() {
        let d = parse_delay("100ms±10ms").unwrap();
        assert_eq!(d.base, Duration::from_millis(100));
        assert_eq!(d.jitter, Duration::from_millis(10));
        assert_eq!(parse_delay("100ms+-10ms"), Ok(d));
        assert_eq!(d.to_string(), "100ms±10ms");
        assert_eq!(
            parse_delay("1.5ms").unwrap().base,
            Duration::from_micros(1500)
        );
        assert_eq!(parse_delay("250us").unwrap().to_string(), "250us");
        assert!(parse_delay("10ms±20ms").is_err());
        assert!(parse_delay("10").is_err());
        assert!(parse_delay("2min").is_err());
    }

    #[test]
    fn merging_overrides_given_fields_and_zero_removes() {
        let old = Impairment {
            delay: Some(parse_delay("100ms").unwrap()),
            loss: Some(Percent(500)),
            ..Default::default()
        };
        let new = Impairment {
            loss: Some(Percent(0)),
            corrupt: Some(Percent(100)),
            ..Default::default()
        };
        let merged = old.merged(&new);
        assert_eq!(merged.delay, old.delay);
        assert_eq!(merged.loss, None);
        assert_eq!(merged.corrupt, Some(Percent(100)));
        assert_eq!(merged.to_string(), "delay 100ms, corrupt 1%");
        let reorder_alone = Impairment {
            reorder: Some(Percent(2500)),
            ..Default::default()
        };
        assert!(reorder_alone.check().is_err());
    }
}
