//! Property tests for the three parsers that take outside input: the config
//! (`config::parse_str`), the udev environment (`UdevEvent::from_env`) and
//! the QMP reader (`Qmp::handshake`/`execute`). Any input: no panic, and an
//! error is one line. Where the format allows, a round trip: what we
//! generate as text parses back to what we generated.

use auto_usb_attach::backend::testing::Qmp;
use auto_usb_attach::config::{self, HubRule, UsbVersion};
use auto_usb_attach::host::{Action, UdevEvent};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, Cursor, Read, Write};

/// A QMP peer: scripted bytes in, what the client sent out.
struct Peer(Cursor<Vec<u8>>, Vec<u8>);
impl Read for Peer {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl BufRead for Peer {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, n: usize) {
        self.0.consume(n)
    }
}
impl Write for Peer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const GREETING: &str =
    r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[^\u{0}]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z-]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn one_line(e: &impl std::fmt::Display) -> bool {
    !e.to_string().contains('\n')
}

const UDEV_KEYS: &[&str] = &[
    "ACTION",
    "SUBSYSTEM",
    "DEVTYPE",
    "BUSNUM",
    "DEVNUM",
    "DEVPATH",
    "PRODUCT",
    "TYPE",
    "ID_VENDOR_ID",
    "ID_MODEL_ID",
    "ID_SERIAL_SHORT",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn config_any_text_never_panics(text in "\\PC{0,200}") {
        if let Err(e) = config::parse_str(&text, "/etc/x.toml") {
            prop_assert!(one_line(&e), "{e}");
        }
    }

    #[test]
    fn config_tomlish_text_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just("[[vm]]".to_string()),
                "(name|qmp|usb-version|ports|max-controllers|hubs|devices|timeout|state-dir|log-file) = (\"[a-z0-9:/.+-]{0,12}\"|-?[0-9]{1,4}(\\.[0-9]{1,3})?|\\[\"[a-z0-9:.+-]{0,10}\"\\]|nan|inf|true)",
            ],
            0..12,
        )
    ) {
        let text = lines.join("\n");
        if let Err(e) = config::parse_str(&text, "/etc/x.toml") {
            prop_assert!(one_line(&e), "{e}");
            prop_assert!(!e.to_string().contains("enum"), "{e}");
        }
    }

    #[test]
    fn config_round_trips(
        timeout_ms in 100u64..=120_000,
        vms in prop::collection::vec(
            (
                "[a-z][a-z0-9_.-]{0,10}",
                1u8..=3,
                1u8..=15,
                1u8..=8,
                prop::collection::vec((1u16..=999, prop::collection::vec(1u8..=15, 0..3)), 0..3),
                prop::collection::vec((any::<u16>(), any::<u16>(), prop::option::of("[A-Za-z0-9:]{1,8}")), 0..3),
            ),
            0..4,
        )
    ) {
        let mut text = format!("timeout = {}.{:03}\n", timeout_ms / 1000, timeout_ms % 1000);
        let mut names = Vec::new();
        for (name, ver, ports, maxc, hubs, devs) in &vms {
            if names.contains(name) {
                continue;
            }
            names.push(name.clone());
            let hubs: Vec<String> = hubs
                .iter()
                .map(|(b, path)| if path.is_empty() { format!("usb{b}") } else {
                    format!("{b}-{}", path.iter().map(u8::to_string).collect::<Vec<_>>().join("."))
                })
                .collect();
            let devs: Vec<String> = devs
                .iter()
                .map(|(v, p, s)| match s { Some(s) => format!("{v:04x}:{p:04X}:{s}"), None => format!("{v:04x}:{p:04x}") })
                .collect();
            text += &format!("\n[[vm]]\nname = \"{name}\"\nusb-version = {ver}\nmax-controllers = {maxc}\nhubs = {hubs:?}\ndevices = {devs:?}\n");
            if *ver == 3 {
                text += &format!("ports = {ports}\n");
            }
        }
        let c = config::parse_str(&text, "t").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(c.timeout.as_millis() as u64, timeout_ms);
        prop_assert_eq!(c.vms.len(), names.len());
        let mut it = c.vms.iter();
        let mut seen = Vec::new();
        for (name, ver, ports, maxc, hubs, devs) in &vms {
            if seen.contains(name) {
                continue;
            }
            seen.push(name.clone());
            let v = it.next().unwrap();
            prop_assert_eq!(&v.name, name);
            let want_ver = match ver { 1 => UsbVersion::V1, 2 => UsbVersion::V2, _ => UsbVersion::V3 };
            prop_assert_eq!(v.usb_version, want_ver);
            prop_assert_eq!(v.ports, match ver { 1 => 2, 2 => 6, _ => *ports });
            prop_assert_eq!(v.max_controllers, *maxc);
            prop_assert_eq!(v.hubs.len(), hubs.len());
            for (h, (b, path)) in v.hubs.iter().zip(hubs) {
                match h {
                    HubRule::Bus(x) => prop_assert!(path.is_empty() && x == b),
                    HubRule::Port(p) => {
                        let prefix = format!("{}-", b);
                        prop_assert!(p.starts_with(&prefix))
                    }
                }
            }
            for (r, (vend, prod, ser)) in v.devices.iter().zip(devs) {
                prop_assert_eq!((r.vendor, r.product, &r.serial), (*vend, *prod, ser));
            }
        }
    }

    #[test]
    fn udev_env_any_values_never_panic(
        env in prop::collection::hash_map(prop::sample::select(UDEV_KEYS), "\\PC{0,20}", 0..UDEV_KEYS.len())
    ) {
        let env: HashMap<String, String> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Err(e) = UdevEvent::from_env(&env) {
            prop_assert!(one_line(&e), "{e}");
        }
    }

    #[test]
    fn udev_env_round_trips(
        action in prop::sample::select(&["add", "bind", "remove"][..]),
        bus in 1u16..=999,
        addr in 1u16..=127,
        vendor in any::<u16>(),
        product in any::<u16>(),
        serial in prop::option::of("[A-Za-z0-9]{1,16}"),
        ports in prop::collection::vec(1u8..=15, 1..4),
        padded in any::<bool>(),
        with_ids in any::<bool>(),
    ) {
        let port_path = format!("{bus}-{}", ports.iter().map(u8::to_string).collect::<Vec<_>>().join("."));
        let mut env: HashMap<String, String> = HashMap::new();
        let num = |n: u16| if padded { format!("{n:03}") } else { n.to_string() };
        env.insert("ACTION".into(), action.into());
        env.insert("SUBSYSTEM".into(), "usb".into());
        env.insert("DEVTYPE".into(), "usb_device".into());
        env.insert("BUSNUM".into(), num(bus));
        env.insert("DEVNUM".into(), num(addr));
        env.insert("DEVPATH".into(), format!("/devices/pci0000:00/0000:00:14.0/usb{bus}/{port_path}"));
        env.insert("PRODUCT".into(), format!("{vendor:x}/{product:x}/100"));
        if with_ids {
            env.insert("ID_VENDOR_ID".into(), format!("{vendor:04x}"));
            env.insert("ID_MODEL_ID".into(), format!("{product:04x}"));
        }
        if let Some(s) = &serial {
            env.insert("ID_SERIAL_SHORT".into(), s.clone());
        }
        let ev = UdevEvent::from_env(&env).map_err(|e| TestCaseError::fail(e.to_string()))?.unwrap();
        let want = match action { "add" => Action::Add, "bind" => Action::Bind, _ => Action::Remove };
        prop_assert_eq!(ev.action, want);
        prop_assert_eq!((ev.bus, ev.addr), (bus, addr));
        prop_assert_eq!((ev.vendor, ev.product), (Some(vendor), Some(product)));
        prop_assert_eq!(&ev.serial, &serial);
        prop_assert_eq!(ev.port_path(), port_path.as_str());
    }

    #[test]
    fn qmp_reader_any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), greet in any::<bool>()) {
        let mut input = Vec::new();
        if greet {
            input.extend_from_slice(GREETING.as_bytes());
            input.push(b'\n');
        }
        input.extend_from_slice(&bytes);
        match Qmp::handshake(Peer(Cursor::new(input), Vec::new())) {
            Ok(mut q) => {
                if let Err(e) = q.execute("query-status", None) {
                    prop_assert!(one_line(&e), "{e}");
                }
            }
            Err(e) => prop_assert!(one_line(&e), "{e}"),
        }
    }

    #[test]
    fn qmp_reader_returns_exactly_what_qemu_sent(ret in json_value(), events in 0usize..3) {
        // QEMU's wire format: one JSON object per line; events may come first.
        let mut input = format!("{GREETING}\n{{\"return\": {{}}, \"id\": \"aua-1\"}}\n");
        for i in 0..events {
            input += &format!("{{\"timestamp\": {{\"seconds\": {i}, \"microseconds\": 0}}, \"event\": \"X\"}}\n");
        }
        input += &format!("{}\n", json!({"return": ret, "id": "aua-2"}));
        let mut q = Qmp::handshake(Peer(Cursor::new(input.into_bytes()), Vec::new())).unwrap();
        prop_assert_eq!(q.execute("qom-list", Some(json!({"path": "/"}))).unwrap(), ret);
        prop_assert_eq!(q.events.len(), events);
    }
}
