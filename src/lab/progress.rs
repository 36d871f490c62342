//! Progress of long operations (`up`, `down`), reported as events to whatever sink the command
//! line installed ([`set_sink`]); without one (the supervisor, the agents, tests of the library)
//! reports go nowhere. The lab code only says what happens; `cli::progress` decides how it
//! looks (plain lines, or one updating line with colour on a terminal).

use std::sync::OnceLock;

/// One step of a long operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A phase starts: "building the network: 6 namespaces, 42 kernel operations".
    Phase(String),
    /// Progress within a phase: "nodes Ready" 2 of 3.
    Count {
        what: &'static str,
        done: usize,
        total: usize,
    },
}

type Sink = Box<dyn Fn(&Event) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Send every later event to `sink` (once per process; a second call is ignored).
pub fn set_sink(sink: impl Fn(&Event) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

/// Report `event` to the sink, if there is one.
pub fn report(event: Event) {
    if let Some(sink) = SINK.get() {
        sink(&event);
    }
}

/// Report the start of a phase.
pub fn phase(text: impl Into<String>) {
    report(Event::Phase(text.into()));
}

/// Report a count within a phase.
pub fn count(what: &'static str, done: usize, total: usize) {
    report(Event::Count { what, done, total });
}
