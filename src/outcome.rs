//! What became of one device, as data: attached, detached, refused or
//! waiting, for which VM, and why. `apply::Exec` decides it (every outcome
//! passes through it); this module only says it: the structured journal
//! fields of its one log line (a stable `MESSAGE_ID` per kind) and the
//! environment the config's `hook` gets (`hook` runs it).

use std::fmt;

/// The kind of an outcome. Its name is `AUTO_USB_ATTACH_EVENT`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The device went into the VM.
    Attached,
    /// The device came out of the VM (unplugged, by hand, or moved).
    Detached,
    /// The device does not go in: `deny` or the host's own use of it keeps
    /// it, or the tool tried and could not (no free port, the VM refused,
    /// not running when asked by hand, ...).
    Refused,
    /// The device stays on the host until something changes: the VM is not
    /// running, or not ready yet (`sync` attaches it then), or the host's
    /// policy has not authorized it yet (its `change` event attaches it).
    Waiting,
}

impl Event {
    pub const ALL: [Event; 4] = [Event::Attached, Event::Detached, Event::Refused, Event::Waiting];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Attached => "attached",
            Event::Detached => "detached",
            Event::Refused => "refused",
            Event::Waiting => "waiting",
        }
    }

    /// The journal's `MESSAGE_ID` of this kind of line: fixed forever (the
    /// man page lists them), so `journalctl MESSAGE_ID=...` finds every
    /// outcome of a kind, from any version of the tool.
    pub fn message_id(self) -> &'static str {
        match self {
            Event::Attached => "58cba8a9f0ea49cab35e675879f4744f",
            Event::Detached => "02d54bc6797c4af5b2689b70cddafeef",
            Event::Refused => "429059bfce4646269fa40e90e69077aa",
            Event::Waiting => "7614104391c94b738b7d9b4cd7eda863",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outcome for one device. A field the tool does not know (a device
/// rebuilt from QEMU after state was lost has no port path) is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub event: Event,
    /// The configured VM's name.
    pub vm: String,
    /// The device's port path (sysfs name), e.g. `1-4.2`.
    pub port: String,
    /// `vvvv:pppp` in hex.
    pub device: String,
    pub serial: String,
    /// Why, in words: "rule", "unplugged", the error that refused it, ...
    pub reason: String,
}

impl Outcome {
    /// The journal fields of the outcome's log line, by the names `log`'s
    /// structured fields use (upper-cased there): `MESSAGE_ID`, `VM`,
    /// `USB_PORT`, `USB_DEVICE`, `USB_SERIAL`. Empty ones are left out.
    pub fn journal_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("message_id", self.event.message_id().to_string())];
        for (k, v) in
            [("vm", &self.vm), ("usb_port", &self.port), ("usb_device", &self.device), ("usb_serial", &self.serial)]
        {
            if !v.is_empty() {
                f.push((k, v.clone()));
            }
        }
        f
    }

    /// The hook's environment: every variable always set (empty when unknown).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AUTO_USB_ATTACH_EVENT", self.event.as_str().to_string()),
            ("AUTO_USB_ATTACH_VM", self.vm.clone()),
            ("AUTO_USB_ATTACH_PORT", self.port.clone()),
            ("AUTO_USB_ATTACH_DEVICE", self.device.clone()),
            ("AUTO_USB_ATTACH_SERIAL", self.serial.clone()),
            ("AUTO_USB_ATTACH_REASON", self.reason.replace('\n', " ")),
        ]
    }
}

impl fmt::Display for Outcome {
    /// `attached 1-4.2 (046d:c52b) to VM win10`, for the hook's own log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match self.event {
            Event::Attached => "to",
            Event::Detached => "from",
            Event::Refused | Event::Waiting => "for",
        };
        let port = if self.port.is_empty() { "?" } else { &self.port };
        let dev = if self.device.is_empty() { "?" } else { &self.device };
        write!(f, "{} {port} ({dev}) {to} VM {}", self.event, self.vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(event: Event) -> Outcome {
        Outcome {
            event,
            vm: "win10".into(),
            port: "1-4.2".into(),
            device: "046d:c52b".into(),
            serial: String::new(),
            reason: "no free USB 3 port\non VM win10".into(),
        }
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let ids: Vec<&str> = Event::ALL.iter().map(|e| e.message_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{id}");
        }
        let mut d = ids.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 4, "{ids:?}");
    }

    /// auto-usb-attach(8) lists each id under LOGGING, followed by its kind.
    #[test]
    fn the_man_page_lists_every_message_id() {
        let page = include_str!("../man/auto-usb-attach.8");
        for e in Event::ALL {
            let entry = format!(".B {}\n{}:", e.message_id(), e.as_str());
            assert!(page.contains(&entry), "the man page lacks {entry:?}");
        }
    }

    #[test]
    fn fields_and_env_say_the_outcome() {
        let w = o(Event::Waiting);
        assert_eq!(
            w.journal_fields(),
            [
                ("message_id", "7614104391c94b738b7d9b4cd7eda863".to_string()),
                ("vm", "win10".into()),
                ("usb_port", "1-4.2".into()),
                ("usb_device", "046d:c52b".into()),
            ],
            "an empty serial is no field"
        );
        let env = w.env();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("AUTO_USB_ATTACH_EVENT"), Some("waiting"));
        assert_eq!(get("AUTO_USB_ATTACH_VM"), Some("win10"));
        assert_eq!(get("AUTO_USB_ATTACH_PORT"), Some("1-4.2"));
        assert_eq!(get("AUTO_USB_ATTACH_DEVICE"), Some("046d:c52b"));
        assert_eq!(get("AUTO_USB_ATTACH_SERIAL"), Some(""), "always set, empty when unknown");
        assert_eq!(get("AUTO_USB_ATTACH_REASON"), Some("no free USB 3 port on VM win10"), "one line");
        assert_eq!(o(Event::Detached).to_string(), "detached 1-4.2 (046d:c52b) from VM win10");
        assert_eq!(o(Event::Attached).env()[0].1, "attached");
        assert_eq!(o(Event::Refused).to_string(), "refused 1-4.2 (046d:c52b) for VM win10");
    }
}
