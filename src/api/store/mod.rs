//! Persistence behind one narrow trait, so an etcd backend can replace the embedded log later.
//!
//! The server keeps every object in memory (see `registry`) and uses a [`Store`] only to make each
//! mutation durable before it answers, and to get everything back at start. An etcd-backed store
//! would implement the same three calls (`load` = range read, `append` = txn put/delete with the
//! revision, `compact` = etcd compaction).

pub mod log;
pub mod memory;

use std::io;

/// One mutation, tagged with the resourceVersion it produced.
#[derive(Debug, Clone, Copy)]
pub enum Mutation<'a> {
    /// Create or replace the object (`json` carries its namespace and name).
    Put {
        rv: u64,
        resource: &'a str,
        json: &'a [u8],
    },
    /// Remove the object `namespace/name` (`name` alone for cluster-scoped ones).
    Delete {
        rv: u64,
        resource: &'a str,
        key: &'a str,
    },
}

/// Everything a store holds at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The highest resourceVersion ever handed out.
    pub rv: u64,
    /// `(resource, object JSON)`; the resource is the qualified plural (`pods`, `deployments.apps`).
    pub objects: Vec<(String, Vec<u8>)>,
}

/// Durable storage of API objects.
pub trait Store: Send {
    /// Read back everything persisted.
    fn load(&mut self) -> io::Result<Loaded>;
    /// Persist one mutation. Returns only once the mutation survives a crash of this process.
    fn append(&mut self, mutation: Mutation<'_>) -> io::Result<()>;
    /// Whether the store would like [`Store::compact`] to be called.
    fn wants_compaction(&self) -> bool;
    /// Replace the history with the current state (`objects` = every live object).
    fn compact(
        &mut self,
        rv: u64,
        objects: &mut dyn Iterator<Item = (&str, &[u8])>,
    ) -> io::Result<()>;
}

/// `namespace/name`, or `name` for cluster-scoped objects: the key a [`Mutation::Delete`] names.
pub fn object_key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}
