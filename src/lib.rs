//! auto-usb-attach as a library: the binary (`main.rs`) is a thin shell over
//! `cmd::run`, and the integration tests use the few public types (config,
//! state, sysfs devices, the deadline, and the raw QMP client through
//! `backend::testing`) instead of copies. Everything else is `pub(crate)`.
//!
//! The layers and which may use which are in docs/ARCHITECTURE.md; the
//! compiler holds most of them (private modules), and `tests/architecture.rs`
//! the rest: it fails on an import across a layer.

pub(crate) mod apply;
pub mod backend;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod controller;
pub(crate) mod ctx;
pub mod deadline;
pub mod error;
pub(crate) mod events;
pub mod fsio;
pub(crate) mod hook;
pub mod host;
pub(crate) mod lock;
pub mod log;
pub mod outcome;
pub(crate) mod plan;
pub(crate) mod queue;
pub(crate) mod report;
pub mod root;
pub mod selector;
pub(crate) mod session;
pub mod state;
pub(crate) mod step;
pub(crate) mod sync;
pub mod timing;
pub mod types;
