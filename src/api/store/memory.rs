//! A store that keeps nothing: for unit tests and `--data-dir`-less experiments.

use std::io;

use super::{Loaded, Mutation, Store};

/// Forgets everything; `load` always starts empty.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn load(&mut self) -> io::Result<Loaded> {
        Ok(Loaded::default())
    }
    fn append(&mut self, _mutation: Mutation<'_>) -> io::Result<()> {
        Ok(())
    }
    fn wants_compaction(&self) -> bool {
        false
    }
    fn compact(
        &mut self,
        _rv: u64,
        _objects: &mut dyn Iterator<Item = (&str, &[u8])>,
    ) -> io::Result<()> {
        Ok(())
    }
}
