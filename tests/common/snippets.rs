//! Config snippets for the tests.

use super::*;

/// A VM with an explicit QMP socket.
pub fn config_qmp(vm: &str, qmp: &str, extra: &str) -> String {
    format!("timeout = 5\n\n[[vm]]\nname = \"{vm}\"\nqmp = \"{qmp}\"\n{extra}\n")
}

/// A Xen VM found by name on <root>/run/xen/qmp-libxl-*.
pub fn config_xen(vm: &str, extra: &str) -> String {
    format!("timeout = 5\n\n[[vm]]\nname = \"{vm}\"\n{extra}\n")
}
