//! Shared helpers for the black-box integration tests, one file per concern;
//! they use the library's real types (`State`, the QMP client) where the tool
//! has them.
//!
//! - [`TestRoot`]: a temp dir used as `--root`, with config/state helpers, removed on drop.
//! - [`run`]/[`TestRoot::run`]/[`TestRoot::udev`]: run the built binary, with a hard
//!   safety kill so a hanging tool fails the test instead of hanging the suite.
//! - [`FakeSysfs`]: a sysfs tree shaped like the kernel's.
//! - [`Qmp`]: a tiny blocking QMP client (greeting, capabilities, events skipped).
//! - [`Qemu`]: a real `qemu-system-x86_64 -M pc -nodefaults -S` guard, killed on drop.
//! - [`FakeQmp`]: a QMP server on a thread that answers in real QEMU 7.2's exact wire
//!   format (see tests/fixtures/qemu-7.2-qmp-transcript.txt) and can misbehave.
#![allow(dead_code, unused_imports)]

mod fake_qmp;
mod fake_qmp_model;
mod fake_xenstored;
mod qemu;
mod qmp_client;
mod root;
mod run;
mod snippets;
mod sysfs;

pub use fake_qmp::*;
pub use fake_qmp_model::*;
pub use fake_xenstored::*;
pub use qemu::*;
pub use qmp_client::*;
pub use root::*;
pub use run::*;
pub use snippets::*;
pub use sysfs::*;

use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_auto-usb-attach");

/// A safety net only: no test asserts on this, it just turns a hang into a failure.
pub const HARD_KILL: Duration = Duration::from_secs(60);
