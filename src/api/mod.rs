//! `kemu apiserver`: a kubectl-compatible Kubernetes API server (placeholder docs, see below).

pub mod alloc;
pub mod defaults;
pub mod discovery;
pub mod kubelet_client;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pods;
pub mod registry;
pub mod resources;
pub mod rest;
pub mod selectors;
pub mod server;
pub mod service;
pub mod status;
pub mod store;
pub mod strict;
pub mod table;
pub mod validation;
pub mod watch;
