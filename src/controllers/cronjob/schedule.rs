//! Cron schedules as the CronJob controller reads them (robfig/cron's standard parser): five
//! fields (minute, hour, day of month, month, day of week; `*`, `?`, `a`, `a-b`, `*/n`, `a/n`,
//! `a-b/n`, lists, month and weekday names), the `@yearly` ... `@hourly` macros and
//! `@every <duration>`, evaluated in a time zone. Day of month and day of week are ORed when
//! both are restricted, as in cron. Pure: the clock is an argument.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Fields(Fields),
    /// `@every`: fixed intervals.
    Every(SignedDuration),
}

/// Bit sets of the allowed values of each field; `dom_star`/`dow_star` record a `*` or `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field: its bits and whether it was a bare `*`/`?` (a star with step 1).
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("failed to parse int from {s}"))?;
        if n < min || n > max {
            return Err(format!("{n} out of range [{min}, {max}]"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                Some(
                    s.parse::<u32>()
                        .map_err(|_| format!("failed to parse int from {s}"))?,
                ),
            ),
            None => (part, None),
        };
        let (start, mut end, is_star) = match range {
            "*" | "?" => (min, max, true),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?, false),
                None => {
                    let v = value(r)?;
                    (v, v, false)
                }
            },
        };
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        // `N/step` means `N-max/step`.
        if part.contains('/') && !range.contains('-') && !is_star {
            end = max;
        }
        if start > end {
            return Err(format!(
                "beginning of range ({start}) beyond end of range ({end}): {part}"
            ));
        }
        if is_star && step == 1 {
            star = true;
        }
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

/// Parse a schedule (`spec.schedule`).
pub fn parse(schedule: &str) -> Result<Schedule, String> {
    let s = schedule.trim();
    let expanded = match s {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other => {
            if let Some(every) = other.strip_prefix("@every ") {
                let d = every
                    .trim()
                    .parse::<SignedDuration>()
                    .or_else(|_| {
                        every
                            .trim()
                            .parse::<jiff::Span>()
                            .map_err(|e| e.to_string())
                            .and_then(|span| {
                                SignedDuration::try_from(span).map_err(|e| e.to_string())
                            })
                    })
                    .map_err(|e| format!("failed to parse duration {every}: {e}"))?;
                if d <= SignedDuration::ZERO {
                    return Err(format!("@every needs a positive duration: {every}"));
                }
                return Ok(Schedule::Every(d));
            }
            if other.starts_with('@') {
                return Err(format!("unrecognized descriptor: {other}"));
            }
            other
        }
    };
    let f: Vec<&str> = expanded.split_whitespace().collect();
    if f.len() != 5 {
        return Err(format!("expected exactly 5 fields, found {}: {s}", f.len()));
    }
    let (minute, _) = field(f[0], 0, 59, &[])?;
    let (hour, _) = field(f[1], 0, 23, &[])?;
    let (dom, dom_star) = field(f[2], 1, 31, &[])?;
    let (month, _) = field(f[3], 1, 12, &MONTHS)?;
    let (dow, dow_star) = field(f[4], 0, 6, &DAYS)?;
    Ok(Schedule::Fields(Fields {
        minute,
        hour,
        dom,
        month,
        dow,
        dom_star,
        dow_star,
    }))
}

fn has(bits: u64, v: i64) -> bool {
    (0..64).contains(&v) && bits & (1 << v) != 0
}

impl Fields {
    fn day_matches(&self, d: DateTime) -> bool {
        let dom = has(self.dom, i64::from(d.day()));
        let dow = has(self.dow, i64::from(d.weekday().to_sunday_zero_offset()));
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first civil minute after `t` (exclusive) that matches, within five years.
    fn next_civil(&self, t: DateTime) -> Option<DateTime> {
        let limit = t.year() + 5;
        // Start at the next whole minute.
        let mut d = t
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        while d.year() <= limit {
            if !has(self.month, i64::from(d.month())) {
                // First minute of the next month.
                d = d
                    .first_of_month()
                    .start_of_day()
                    .checked_add(1.month())
                    .ok()?;
                continue;
            }
            if !self.day_matches(d) {
                d = d.start_of_day().checked_add(1.day()).ok()?;
                continue;
            }
            if !has(self.hour, i64::from(d.hour())) {
                d = d
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !has(self.minute, i64::from(d.minute())) {
                d = d.checked_add(1.minute()).ok()?;
                continue;
            }
            return Some(d);
        }
        None
    }
}

impl Schedule {
    /// The first time after `t` the schedule fires, in `tz`.
    pub fn next(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Every(d) => {
                // robfig rounds the interval to whole seconds and the start down to one.
                let secs = d.as_secs().max(1);
                Some(Timestamp::from_second(t.as_second() + secs).ok()?)
            }
            Schedule::Fields(f) => {
                let civil = t.to_zoned(tz.clone()).datetime();
                let mut next = f.next_civil(civil)?;
                loop {
                    let ts = tz.to_ambiguous_zoned(next).compatible().ok()?.timestamp();
                    if ts > t {
                        return Some(ts);
                    }
                    // A civil time that maps back before `t` (the repeated hour of a DST
                    // change): keep looking.
                    next = f.next_civil(next)?;
                }
            }
        }
    }
}

/// What the controller should do at `now` (kube's `mostRecentScheduleTime`): the most recent
/// missed time in `(earliest, now]` (if any), how many were missed (capped at 101), and the
/// next time after `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub most_recent: Option<Timestamp>,
    pub missed: u32,
    pub next: Option<Timestamp>,
}

/// The schedule's state between `earliest` (the last schedule time, or the CronJob's
/// creation) and `now`; with a starting deadline, times older than `now - deadline` do not
/// count.
pub fn due(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
    starting_deadline: Option<i64>,
) -> Due {
    let mut from = earliest;
    if let Some(d) = starting_deadline {
        let floor = now - SignedDuration::from_secs(d);
        if floor > from {
            from = floor;
        }
    }
    let mut most_recent = None;
    let mut missed = 0;
    let mut t = from;
    while let Some(n) = schedule.next(t, tz) {
        if n > now {
            break;
        }
        most_recent = Some(n);
        missed += 1;
        if missed > 100 {
            // kube gives up counting ("too many missed start times") and takes the latest.
            let mut last = n;
            while let Some(m) = schedule.next(last, tz) {
                if m > now {
                    break;
                }
                last = m;
            }
            most_recent = Some(last);
            break;
        }
        t = n;
    }
    Due {
        most_recent,
        missed,
        next: schedule.next(now, tz),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next_n(schedule: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let s = parse(schedule).unwrap();
        let tz = TimeZone::get(tz).unwrap();
        let mut t = ts(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next(t, &tz).unwrap();
            out.push(t.to_zoned(tz.clone()).to_string());
        }
        out
    }

    #[test]
    fn next_times() {
        let mut out = String::new();
        for (schedule, tz, from) in [
            ("* * * * *", "UTC", "2026-12-05T12:00:30Z"),
            ("*/15 * * * *", "UTC", "2026-12-05T12:07:00Z"),
            ("0 3 * * 1-5", "UTC", "2026-12-05T12:00:00Z"),
            ("@hourly", "UTC", "2026-12-05T12:00:00Z"),
            ("@daily", "Europe/Berlin", "2026-12-05T12:00:00Z"),
            ("0 0 29 2 *", "UTC", "2026-12-05T12:00:00Z"),
            ("0 0 13 * 5", "UTC", "2026-12-05T12:00:00Z"),
            ("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z"),
            ("5/20 9-17/4 * jan,dec sun", "UTC", "2026-12-05T12:00:00Z"),
            ("@every 90s", "UTC", "2026-12-05T12:00:00Z"),
        ] {
            out.push_str(&format!(
                "{schedule} ({tz}) after {from}:\n  {}\n",
                next_n(schedule, tz, from, 4).join("\n  ")
            ));
        }
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(out));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "@often",
            "@every -5s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn missed_times_and_the_starting_deadline() {
        let s = parse("*/5 * * * *").unwrap();
        let utc = TimeZone::UTC;
        let d = due(
            &s,
            &utc,
            ts("2026-12-05T12:00:00Z"),
            ts("2026-12-05T12:17:00Z"),
            None,
        );
        assert_eq!(
            d,
            Due {
                most_recent: Some(ts("2026-12-05T12:15:00Z")),
                missed: 3,
                next: Some(ts("2026-12-05T12:20:00Z")),
            }
        );
        // Nothing due yet.
        let d = due(
            &s,
            &utc,
            ts("2026-12-05T12:15:00Z"),
            ts("2026-12-05T12:17:00Z"),
            None,
        );
        assert_eq!(d.most_recent, None);
        // A deadline of 60s: 12:15 is too old at 12:17.
        let d = due(
            &s,
            &utc,
            ts("2026-12-05T12:00:00Z"),
            ts("2026-12-05T12:17:00Z"),
            Some(60),
        );
        assert_eq!(d.most_recent, None);
        let d = due(
            &s,
            &utc,
            ts("2026-12-05T12:00:00Z"),
            ts("2026-12-05T12:15:30Z"),
            Some(60),
        );
        assert_eq!(d.most_recent, Some(ts("2026-12-05T12:15:00Z")));
        // Many missed: counted up to 101, the latest taken.
        let every = parse("* * * * *").unwrap();
        let d = due(
            &every,
            &utc,
            ts("2026-12-01T00:00:00Z"),
            ts("2026-12-05T12:00:10Z"),
            None,
        );
        assert_eq!(d.missed, 101);
        assert_eq!(d.most_recent, Some(ts("2026-12-05T12:00:00Z")));
    }
}
