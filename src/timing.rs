//! Every fixed wait and poll interval in one place, so a reader sees the
//! whole timing picture at once and tests can shorten the slow ones.
//!
//! Each value can be overridden for one invocation with an environment
//! variable holding milliseconds (`AUTO_USB_ATTACH_<NAME>_MS`, e.g.
//! `AUTO_USB_ATTACH_SYNC_RETRY_MS=50`). Tests use that; nothing else should.

use std::time::Duration;

fn ms(name: &str, default: u64) -> Duration {
    let v = std::env::var(format!("AUTO_USB_ATTACH_{name}_MS")).ok().and_then(|v| v.parse().ok());
    Duration::from_millis(v.unwrap_or(default))
}

/// How long `sync` waits between tries for a QEMU that is still starting.
pub fn sync_retry() -> Duration {
    ms("SYNC_RETRY", 250)
}

/// How long `sync` waits for one VM's QMP greeting before it skips that VM
/// as busy: one busy VM must not eat the others' budget.
pub fn scan_greeting_cap() -> Duration {
    ms("SCAN_GREETING_CAP", 2000)
}

/// A QMP socket that refuses connections and is older than this is left
/// behind by a QEMU that died: `sync` stops waiting for it to start. (A
/// QEMU listens within milliseconds of creating its socket.)
pub fn stale_socket() -> Duration {
    ms("STALE_SOCKET", 2000)
}

/// A plain VM's socket directory made less than this long ago, without the
/// VM's socket yet, is taken for a QEMU starting now (its making triggered
/// the sync path unit a moment before QEMU makes its socket): `sync` waits
/// for the socket as for any VM still starting.
pub fn fresh_socket_dir() -> Duration {
    ms("FRESH_SOCKET_DIR", 2000)
}

/// At most this long is spent asking xenstore whether libxl records a device
/// that no rule routes and state does not hold (an unplug after `xl
/// usbdev-attach`): a cleanup the next sync also does, so a xenstored that is
/// absent or hung must not hold the event for the whole budget.
pub fn xl_lookup_cap() -> Duration {
    ms("XL_LOOKUP_CAP", 500)
}

/// How long an event asks a VM's owner whether it answers (Xen: xenstored
/// finds the domain) before it takes the state lock: a hung owner must not
/// keep the lock, and so every other VM's events, for the whole budget.
pub fn probe_cap() -> Duration {
    ms("PROBE_CAP", 1000)
}

/// Poll interval for the state lock and for a full socket backlog (EAGAIN).
pub fn poll() -> Duration {
    ms("POLL", 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_override() {
        assert_eq!(ms("AUA_TEST_UNSET", 7), Duration::from_millis(7));
        std::env::set_var("AUTO_USB_ATTACH_AUA_TEST_SET_MS", "42");
        assert_eq!(ms("AUA_TEST_SET", 7), Duration::from_millis(42));
        std::env::set_var("AUTO_USB_ATTACH_AUA_TEST_SET_MS", "x");
        assert_eq!(ms("AUA_TEST_SET", 7), Duration::from_millis(7));
    }
}
