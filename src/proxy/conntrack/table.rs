//! The namespace's conntrack table as the cleanup sees it: the [`FlowIndex`] kept from the
//! kernel's events, listed again by a dump only when the index cannot be trusted (at the
//! start, after lost events) or when no events can be had (then every cleanup dumps, as
//! kube-proxy does). The thin layer between [`super::stale_flows`] and the kernel.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::Flow;
use super::index::FlowIndex;
use crate::proxy::nfnetlink::{ConntrackEvents, Nfnl};

/// Receive buffer of the event listener: about 5,000 queued events (each takes a socket
/// buffer of about 1 KiB), read as they come by the agent's loop.
pub const EVENT_BUFFER: usize = 8 << 20;

/// Where the flows of a cleanup came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The index, kept from events.
    Events,
    /// A dump of the table (the first time, after lost events, or without events).
    Dump,
}

pub struct ConntrackTable {
    events: Option<ConntrackEvents>,
    index: FlowIndex,
    /// The index holds every entry of the table (as of the last event read).
    in_sync: bool,
}

impl ConntrackTable {
    /// Listen to the namespace's conntrack events with a receive buffer of `buffer` bytes
    /// (without events, when the namespace's `nf_conntrack_events` is 0 or the listener
    /// cannot be opened, every listing is a dump). The index is filled by the first listing.
    pub fn open(buffer: usize) -> ConntrackTable {
        let events = if events_enabled() {
            ConntrackEvents::open(buffer)
                .inspect_err(|e| tracing::warn!("no conntrack events ({e}): cleanups dump"))
                .ok()
        } else {
            tracing::info!("nf_conntrack_events is 0 here: conntrack cleanups dump the table");
            None
        };
        ConntrackTable {
            events,
            index: FlowIndex::default(),
            in_sync: false,
        }
    }

    /// Apply the events queued since the last read (the agent calls this whenever the
    /// listener is readable, so that they do not pile up between syncs).
    pub fn read_events(&mut self) -> io::Result<()> {
        let Some(events) = &mut self.events else {
            return Ok(());
        };
        let index = &mut self.index;
        let complete = events.read(|e| index.apply(e))?;
        if !complete && self.in_sync {
            tracing::warn!("conntrack events were lost: the next cleanup dumps the table");
            self.in_sync = false;
        }
        Ok(())
    }

    /// The UDP entries of one family's table (other protocols are never cleaned up).
    pub fn flows(&mut self, nfnl: &mut Nfnl, ipv6: bool) -> io::Result<(Vec<Flow>, Source)> {
        self.read_events()?;
        if self.in_sync {
            return Ok((self.index.flows(ipv6), Source::Events));
        }
        let table = nfnl.list_flows(ipv6)?;
        if self.events.is_some() {
            // Events queued while the table was dumped are applied after it, in order:
            // they are newer than what the dump saw of their entry.
            self.index.replace(&table);
            self.in_sync = true;
            self.read_events()?;
        }
        Ok((table, Source::Dump))
    }

    /// Delete `flows`; the index forgets them and those the kernel no longer had.
    pub fn delete(&mut self, nfnl: &mut Nfnl, flows: &[Flow]) -> io::Result<usize> {
        if flows.is_empty() {
            return Ok(0);
        }
        // Not listening to the DESTROY events of our own deletes spares the kernel building
        // them. A DESTROY of another entry missed meanwhile only leaves a gone entry in the
        // index (never a missing one), whose delete would answer ENOENT.
        let paused = self
            .events
            .as_ref()
            .is_some_and(|e| e.listen_to_destroy(false).is_ok());
        let result = nfnl.delete_flows(flows);
        if paused
            && let Some(events) = &self.events
            && let Err(e) = events.listen_to_destroy(true)
        {
            // Without DESTROY events gone entries would pile up: use dumps from now on.
            tracing::warn!("cannot listen to conntrack DESTROY events again ({e}): cleanups dump");
            self.events = None;
            self.in_sync = false;
        }
        // Deleted or not found: gone either way (an entry that predates the listener gets
        // no DESTROY event).
        for f in flows {
            self.index.forget(f);
        }
        result
    }

    /// A duplicate of the listener's descriptor, to wait for events on.
    pub fn event_fd(&self) -> io::Result<Option<OwnedFd>> {
        self.events
            .as_ref()
            .map(|e| e.as_fd().try_clone_to_owned())
            .transpose()
    }

    /// Entries in the index (for logs and tests).
    pub fn indexed(&self) -> usize {
        self.index.len()
    }
}

/// `net.netfilter.nf_conntrack_events` of the calling thread's namespace: 0 means no events
/// (1 always, 2 — the default — once a listener subscribed).
fn events_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_events")
        .map(|v| v.trim() != "0")
        .unwrap_or(true)
}
