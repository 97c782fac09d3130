//! auto-usb-attach as a library: the binary (`main.rs`) is a thin shell over
//! `cmd::run`, and the integration tests use these real types (state, QMP
//! client, planners) instead of copies.
//!
//! Layering, bottom up (a module only uses modules above it in this list):
//! values (`types`, `controller`, `config`, `state`, `host`), infrastructure
//! (`root`, `deadline`, `timing`, `lock`, `log`, `qmp`), pure policy (`plan`,
//! `events`, `sync`, producing `step::Step`s), Xen's books (`xenstore`,
//! `xenlock`, `xen`: libxl's records and locks), the one writer to a VM
//! (`session` with its `backend`), finding a VM (`vm`), the invocation's
//! context (`ctx`), step execution (`apply`) and the commands (`cmd`).

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
