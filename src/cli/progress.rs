//! How `up` and `down` show progress on stderr: on a terminal, phases in colour and counts on
//! one line that updates in place; otherwise (a log file, CI) plain lines, a count only when it
//! changed, and never a colour code. `NO_COLOR` turns colour off on a terminal too.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use crate::lab::progress::{Event, set_sink};

/// Turns events into text; pure, so both looks are tested without a terminal.
#[derive(Debug, Default)]
pub struct Renderer {
    terminal: bool,
    colour: bool,
    last: Option<Event>,
    /// A count line on the terminal that has no newline yet.
    open: bool,
    /// Plain lines: the count and tenth last written.
    printed: Option<(String, usize)>,
}

const BOLD_CYAN: &str = "\x1b[1;36m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

impl Renderer {
    pub fn new(terminal: bool, colour: bool) -> Renderer {
        Renderer {
            terminal,
            colour: terminal && colour,
            ..Renderer::default()
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    /// The text to write for `event` (empty when nothing changed).
    pub fn render(&mut self, event: &Event) -> String {
        if self.last.as_ref() == Some(event) {
            return String::new();
        }
        self.last = Some(event.clone());
        let mut out = String::new();
        match event {
            Event::Phase(text) => {
                out.push_str(&self.finish());
                out.push_str(&self.paint(BOLD_CYAN, text));
                out.push('\n');
            }
            Event::Count { what, done, total } => {
                let numbers = format!("{done}/{total}");
                let numbers = if done == total {
                    self.paint(GREEN, &numbers)
                } else {
                    numbers
                };
                if self.terminal {
                    // Back to the line's start and clear it: the count updates in place.
                    out.push_str(&format!("\r\x1b[2K  {what} {numbers}"));
                    self.open = true;
                    if done == total {
                        out.push_str(&self.finish());
                    }
                } else if self.new_tenth(what, *done, *total) {
                    out.push_str(&format!("  {what} {numbers}\n"));
                }
            }
        }
        out
    }

    /// Plain lines: a count is written when it enters a new tenth of its total (and at the
    /// end), so a 1,000-host lab logs a dozen lines per phase, not a thousand.
    fn new_tenth(&mut self, what: &str, done: usize, total: usize) -> bool {
        let tenth = (done * 10).checked_div(total).unwrap_or(10);
        let key = (what.to_string(), tenth);
        if self.printed.as_ref() == Some(&key) {
            return false;
        }
        self.printed = Some(key);
        true
    }

    /// End an open count line.
    pub fn finish(&mut self) -> String {
        if std::mem::take(&mut self.open) {
            "\n".into()
        } else {
            String::new()
        }
    }
}

static RENDERER: Mutex<Option<Renderer>> = Mutex::new(None);

/// Show the lab code's progress events on stderr from now on.
pub fn install() {
    let terminal = std::io::stderr().is_terminal();
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    *RENDERER.lock().unwrap_or_else(|e| e.into_inner()) = Some(Renderer::new(terminal, colour));
    set_sink(|event| {
        let mut guard = RENDERER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = guard.as_mut() {
            let text = r.render(event);
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    });
}

/// End an open count line before the command prints its result.
pub fn finish() {
    let mut guard = RENDERER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = guard.as_mut() {
        let _ = std::io::stderr().write_all(r.finish().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<Event> {
        let count = |done| Event::Count {
            what: "nodes Ready",
            done,
            total: 3,
        };
        vec![
            Event::Phase("building the network: 6 namespaces".into()),
            Event::Phase("starting the agents".into()),
            count(0),
            count(0),
            count(2),
            count(3),
            Event::Phase("done".into()),
        ]
    }

    #[test]
    fn plain_counts_of_a_big_lab_take_a_dozen_lines() {
        let mut r = Renderer::new(false, false);
        let text: String = (0..=1000)
            .map(|done| {
                r.render(&Event::Count {
                    what: "namespaces removed",
                    done,
                    total: 1000,
                })
            })
            .collect();
        assert_eq!(text.lines().count(), 11, "{text}");
        assert!(text.ends_with("  namespaces removed 1000/1000\n"));
    }

    #[test]
    fn plain_lines_without_colour_when_not_on_a_terminal() {
        let mut r = Renderer::new(false, true);
        let text: String = events().iter().map(|e| r.render(e)).collect();
        assert_eq!(
            text,
            "building the network: 6 namespaces\nstarting the agents\n  nodes Ready 0/3\n  nodes Ready 2/3\n  nodes Ready 3/3\ndone\n"
        );
    }

    #[test]
    fn one_updating_line_and_colour_on_a_terminal() {
        let mut r = Renderer::new(true, true);
        let text: String = events().iter().map(|e| r.render(e)).collect::<String>() + &r.finish();
        assert_eq!(
            text,
            "\x1b[1;36mbuilding the network: 6 namespaces\x1b[0m\n\x1b[1;36mstarting the agents\x1b[0m\n\
             \r\x1b[2K  nodes Ready 0/3\r\x1b[2K  nodes Ready 2/3\r\x1b[2K  nodes Ready \x1b[32m3/3\x1b[0m\n\
             \x1b[1;36mdone\x1b[0m\n"
        );
        // NO_COLOR: the line still updates in place, without colour codes.
        let mut r = Renderer::new(true, false);
        let text: String = events().iter().map(|e| r.render(e)).collect();
        assert!(
            !text.contains("\x1b[1;36m") && !text.contains("\x1b[32m"),
            "{text:?}"
        );
        assert!(text.contains("\r\x1b[2K  nodes Ready 2/3"));
    }
}
