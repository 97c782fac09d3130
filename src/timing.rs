//! Every fixed wait and poll interval in one place, so a reader sees the
//! whole timing picture at once and tests can shorten the slow ones.
//!
//! Each value can be overridden for one invocation with an environment
//! variable holding milliseconds (`AUTO_USB_ATTACH_<NAME>_MS`, e.g.
//! `AUTO_USB_ATTACH_XEN_SETTLE_MS=500`). Tests use that; nothing else should.

use std::time::Duration;

fn ms(name: &str, default: u64) -> Duration {
    let v = std::env::var(format!("AUTO_USB_ATTACH_{name}_MS")).ok().and_then(|v| v.parse().ok());
    Duration::from_millis(v.unwrap_or(default))
}

/// libxl adds the controllers a domain's config asks for (`xenusb-N`) over
/// QMP right after its QEMU starts; creating ours first would make libxl's
/// device_add fail ("Duplicate device ID") and the domain with it. So before
/// creating a controller in a Xen VM whose socket is this new, we wait.
pub fn xen_settle() -> Duration {
    ms("XEN_SETTLE", 3000)
}

/// How long `sync` waits between tries for a QEMU that is still starting.
pub fn sync_retry() -> Duration {
    ms("SYNC_RETRY", 250)
}

/// While scanning Xen sockets for a name, a busy unrelated domain must not
/// eat the whole budget.
pub fn scan_greeting_cap() -> Duration {
    ms("SCAN_GREETING_CAP", 2000)
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
