//! `kemu apiserver`: a kubectl-compatible Kubernetes API server (wire spec:
//! `shared/research/kubectl-api.md`). kubectl 1.30+ (and the dispatcher's 1.32), kube-rs clients,
//! and kemu's own agents (scheduler, controllers, kubelet, proxy) talk to it over plain HTTP.
//!
//! # Layout
//! - [`server`]: configuration, start-up (store, allocators, built-in namespaces and the
//!   `kubernetes` Service/Endpoints/EndpointSlice) and the router.
//! - [`request`]: what a request addresses and asks for (path → target, with kube-apiserver's
//!   path-segment checks; query; `Accept`); [`body`]: request bodies (the 3 MiB limit on raw
//!   bytes, Content-Type → decoder, 415).
//! - [`rest`]: the one generic resource handler (verbs, subresources status and scale,
//!   create/update/patch/delete semantics, finalizers, graceful pod deletion, dry run,
//!   reads that wait for a resourceVersion).
//! - [`pods`]: `binding`, `log` and `exec`; [`kubelet_client`]: the kubelet interface they use.
//!   `rest` dispatches to `pods`; both take the request's shape from `request`.
//! - [`resources`]: the kind table that drives routing, discovery, OpenAPI and selectors.
//! - [`registry`]: in-memory objects, the global resourceVersion, watch fan-out and history;
//!   [`store`]: durability behind the `Store` trait ([`store::log`]: snapshot + append-only log).
//! - [`watch`]: watch streams; [`table`]: server-side printing; [`discovery`], [`openapi`];
//!   [`protobuf`]: the protobuf bodies of kubectl's generators.
//! - Pure object logic: [`defaults`], [`validation`], [`strict`] (unknown fields),
//!   [`patch`] (strategic merge, merge, JSON patch, apply), [`selectors`], [`alloc`] and
//!   [`service`] (ClusterIP/NodePort), [`status`] (Status errors), [`object`] (stored form).
//!
//! # Design choices
//! - Objects are stored as compact JSON bytes plus the labels and selectable fields: lists are
//!   concatenations, one serialisation serves every watcher, and 10k objects cost little memory.
//! - Every write runs in one registry transaction under one lock: preconditions, allocation, the
//!   durable append and the watch broadcast happen atomically and in resourceVersion order.
//! - Storage is an append-only log written before the reply (survives SIGKILL; `--fsync` for
//!   power loss) with compaction into a snapshot; resourceVersions continue across restarts.
//!   An etcd backend would implement the same `Store` trait.
//! - Types from k8s-openapi are used where typing helps (strict field validation), JSON values
//!   elsewhere (defaulting, validation, patches, tables), so unknown kinds of data never break.
//!
//! # Known gaps
//! Request bodies are JSON, YAML or the protobuf of the kinds kubectl's generators post; answers
//! are JSON only (an `Accept` without JSON gets 406); exec needs WebSockets (kubectl 1.30+);
//! server-side apply ([`managed`]) keys associative lists by one merge key (kube: the
//! schema's list-map keys, e.g. `containerPort` and `protocol`); the garbage collector (dependents, `orphan`/`foregroundDeletion`
//! finalizers) is a separate controller.

pub mod admission;
pub mod alloc;
pub mod auth;
pub mod body;
pub mod defaults;
pub mod discovery;
pub mod eviction;
pub mod kinds;
pub mod kubelet_client;
pub mod managed;
pub mod object;
pub mod openapi;
pub mod paging;
pub mod patch;
pub mod pods;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod resources;
pub mod response;
pub mod rest;
pub mod routes;
pub mod secure;
pub mod selectors;
pub mod server;
pub mod service;
pub mod status;
pub mod store;
pub mod strict;
pub mod table;
pub mod validation;
pub mod watch;
