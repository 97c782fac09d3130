//! auto-usb-attach as a library: the binary (`main.rs`) is a thin shell over
//! `cmd::run`, and the integration tests use these real types (state, QMP
//! client, planners) instead of copies.
//!
//! The layers and which may use which are in docs/ARCHITECTURE.md; the rule
//! itself is `tests/architecture.rs`, which fails on an import across a layer.

pub mod apply;
pub mod backend;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod controller;
pub mod ctx;
pub mod deadline;
pub mod error;
pub mod events;
pub mod firmware;
pub mod fsio;
pub mod host;
pub mod libvirt;
pub mod lock;
pub mod log;
pub mod plan;
pub mod qmp;
pub mod report;
pub mod root;
pub mod selector;
pub mod session;
pub mod state;
pub mod step;
pub mod sync;
pub mod timing;
pub mod types;
pub mod vm;
pub mod xen;
pub mod xenlock;
pub mod xenstore;
