//! `kemu apiserver`: a kubectl-compatible Kubernetes API server (placeholder docs, see below).

pub mod alloc;
pub mod defaults;
pub mod object;
pub mod patch;
pub mod registry;
pub mod resources;
pub mod selectors;
pub mod status;
pub mod table;
pub mod store;
pub mod validation;
