//! What `FakeQmp` answers: a small model of QEMU 7.2 for the commands this
//! tool sends. It models QEMU independently of the tool's own code (a test
//! oracle must not share the code under test).

use super::*;

pub(crate) type Answer = Result<Value, (String, String)>;

pub(crate) fn gerr(desc: String) -> Answer {
    Err(("GenericError".into(), desc))
}

/// A small model of QEMU 7.2's answers to what this tool uses.
pub(crate) fn answer(
    v: &Value,
    negotiated: &mut bool,
    opts: &FakeOptions,
    sh: &Arc<Mutex<FakeShared>>,
) -> (Answer, Vec<String>) {
    let Some(obj) = v.as_object() else {
        return (gerr("QMP input must be a JSON object".into()), vec![]);
    };
    let Some(cmd) = obj.get("execute").and_then(|c| c.as_str()) else {
        return (gerr("QMP input lacks member 'execute'".into()), vec![]);
    };
    let args = obj.get("arguments").cloned().unwrap_or(json!({}));
    if !*negotiated {
        if cmd == "qmp_capabilities" {
            *negotiated = true;
            return (Ok(json!({})), vec![]);
        }
        return (
            Err(("CommandNotFound".into(), "Expecting capabilities negotiation with 'qmp_capabilities'".into())),
            vec![],
        );
    }
    let mut g = sh.lock().unwrap();
    let s = |k: &str| args.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match cmd {
        "qmp_capabilities" => (
            Err(("CommandNotFound".into(), "Capabilities negotiation is already complete, command ignored".into())),
            vec![],
        ),
        "query-name" => (
            Ok(match &opts.name {
                Some(n) => json!({"name": n}),
                None => json!({}),
            }),
            vec![],
        ),
        "query-status" => (Ok(json!({"status": "prelaunch", "singlestep": false, "running": false})), vec![]),
        // The machine as started (`-M pc -nodefaults`); controllers added later are not modelled here.
        "query-pci" => (Ok(pc_nodefaults()["query-pci"].clone()), vec![]),
        // `-M pc -nodefaults` has no drive: no block device, nothing read (real QEMU 7.2: `[]`).
        "query-blockstats" => (Ok(json!([])), vec![]),
        "query-version" => (
            Ok(json!({"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"})),
            vec![],
        ),
        "device_add" => {
            let Some(driver) = s("driver") else {
                return (gerr("Parameter 'driver' is missing".into()), vec![]);
            };
            let id = s("id");
            if let Some(id) = &id {
                if g.devices.iter().any(|d| &d.id == id) {
                    return (gerr(format!("Duplicate device ID '{id}'")), vec![]);
                }
            }
            let mut props = args.as_object().cloned().unwrap_or_default();
            props.remove("driver");
            props.remove("id");
            let bus_arg = props.remove("bus").and_then(|b| b.as_str().map(str::to_string));
            if is_controller(&driver) {
                g.devices.push(FakeDev { id: id.unwrap_or_default(), driver, props, bus: None });
                return (Ok(json!({})), vec![]);
            }
            if driver != "usb-host" {
                return (gerr(format!("'{driver}' is not a valid device model name")), vec![]);
            }
            for k in ["hostbus", "hostaddr"] {
                if props.get(k).is_some_and(|x| !x.is_u64()) {
                    // QEMU 7.2 still converts strings; the tool must send integers (9.2 refuses strings).
                    return (gerr(format!("Parameter '{k}' expects uint32 (test fake: send a JSON integer)")), vec![]);
                }
            }
            let bus = match bus_arg {
                Some(b) => {
                    let exists = g.devices.iter().any(|d| is_controller(&d.driver) && format!("{}.0", d.id) == b);
                    if !exists {
                        return (gerr(format!("Bus '{b}' not found")), vec![]);
                    }
                    b
                }
                None => match g.devices.iter().find(|d| is_controller(&d.driver)) {
                    Some(c) => format!("{}.0", c.id),
                    None => return (gerr("No 'usb-bus' bus found for device 'usb-host'".into()), vec![]),
                },
            };
            let child = g.new_child(&bus);
            let ctrl = g.devices.iter().find(|d| format!("{}.0", d.id) == bus).unwrap();
            let nports = controller_ports(&ctrl.driver, &ctrl.props);
            let used: Vec<String> = g
                .devices
                .iter()
                .filter(|d| d.bus.as_deref() == Some(bus.as_str()))
                .filter_map(|d| d.props.get("port").and_then(|p| p.as_str()).map(str::to_string))
                .collect();
            let port = match props.get("port").and_then(|p| p.as_str()) {
                Some(p) => {
                    let n: u64 = p.parse().unwrap_or(0);
                    if n == 0 || n > nports || used.iter().any(|u| u == p) {
                        return (gerr(format!("usb port {p} (bus {bus}) not found (in use?)")), vec![]);
                    }
                    p.to_string()
                }
                None => match (1..=nports).map(|n| n.to_string()).find(|n| !used.contains(n)) {
                    Some(n) => n,
                    None => return (gerr(format!("no free usb port on bus {bus}")), vec![]),
                },
            };
            let hb = props.get("hostbus").and_then(|x| x.as_u64()).unwrap_or(0);
            let ha = props.get("hostaddr").and_then(|x| x.as_u64()).unwrap_or(0);
            let by_port = props.get("hostport").is_some() || props.get("vendorid").is_some();
            if !opts.host_has_devices && !by_port {
                if let Some(dev) = props.get("hostdevice").and_then(|d| d.as_str()) {
                    return (gerr(format!("failed to open {dev}: No such file or directory")), vec![]);
                }
                return (gerr(format!("failed to find host usb device {hb}:{ha}")), vec![]);
            }
            props.insert("port".into(), json!(port));
            props.insert("attached".into(), json!(opts.host_has_devices && !by_port));
            let id = id.unwrap_or_default();
            g.child_of.insert(id.clone(), child);
            g.devices.push(FakeDev { id, driver, props, bus: Some(bus) });
            (Ok(json!({})), vec![])
        }
        "device_del" => {
            let Some(id) = s("id") else {
                return (gerr("Parameter 'id' is missing".into()), vec![]);
            };
            let Some(i) = g.devices.iter().position(|d| d.id == id) else {
                return (Err(("DeviceNotFound".into(), format!("Device '{id}' not found"))), vec![]);
            };
            if is_controller(&g.devices[i].driver) {
                // PCI unplug needs the (paused) guest: accepted, nothing happens.
                return (Ok(json!({})), vec![]);
            }
            g.devices.remove(i);
            let ev = event_line("DEVICE_DELETED", json!({"device": id, "path": format!("/machine/peripheral/{id}")}));
            (Ok(json!({})), vec![ev])
        }
        "qom-list" => {
            let path = s("path").unwrap_or_default();
            if path == "/machine/peripheral" {
                let mut out = vec![json!({"name": "type", "type": "string"})];
                for d in g.devices.iter().filter(|d| !d.id.is_empty()) {
                    out.push(json!({"name": d.id, "type": format!("child<{}>", d.driver)}));
                }
                return (Ok(Value::Array(out)), vec![]);
            }
            match path.as_str() {
                "/machine/peripheral-anon" => return (Ok(json!([{"name": "type", "type": "string"}])), vec![]),
                "/machine/unattached" => return (Ok(pc_nodefaults()["unattached"].clone()), vec![]),
                _ => {}
            }
            if let Some(bus) = resolve_bus(&g, &path) {
                let mut out =
                    vec![json!({"name": "type", "type": "string"}), json!({"name": "realized", "type": "bool"})];
                for (n, d) in g.children(&bus) {
                    out.push(json!({"name": format!("child[{n}]"), "type": format!("link<{}>", d.driver)}));
                }
                out.push(json!({"name": "hotplug-handler", "type": "link<hotplug-handler>"}));
                return (Ok(Value::Array(out)), vec![]);
            }
            if let Some(d) = resolve_dev(&g, &path) {
                let mut out = vec![
                    json!({"name": "type", "type": "string"}),
                    json!({"name": "parent_bus", "type": "link<bus>"}),
                    json!({"name": "realized", "type": "bool"}),
                ];
                if is_controller(&d.driver) {
                    out.push(json!({"name": format!("{}.0", d.id), "type": "child<usb-bus>"}));
                    out.push(json!({"name": "p2", "type": "uint32"}));
                    out.push(json!({"name": "p3", "type": "uint32"}));
                } else {
                    for (n, t) in [
                        ("port", "str"),
                        ("hostbus", "uint32"),
                        ("hostaddr", "uint32"),
                        ("hostport", "str"),
                        ("hostdevice", "str"),
                        ("vendorid", "uint32"),
                        ("productid", "uint32"),
                        ("attached", "bool"),
                    ] {
                        out.push(json!({"name": n, "type": t}));
                    }
                }
                return (Ok(Value::Array(out)), vec![]);
            }
            (Err(("DeviceNotFound".into(), format!("Device '{path}' not found"))), vec![])
        }
        "qom-get" => {
            let path = s("path").unwrap_or_default();
            let prop = s("property").unwrap_or_default();
            if let Some(bus) = resolve_bus(&g, &path) {
                if let Some(n) =
                    prop.strip_prefix("child[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse::<usize>().ok())
                {
                    if let Some((_, d)) = g.children(&bus).into_iter().find(|(c, _)| *c == n) {
                        return (Ok(json!(format!("/machine/peripheral/{}", d.id))), vec![]);
                    }
                }
                if prop == "type" {
                    return (Ok(json!("usb-bus")), vec![]);
                }
                return (gerr(format!("Property 'usb-bus.{prop}' not found")), vec![]);
            }
            if (path.as_str(), prop.as_str()) == ("/machine", "type") {
                return (Ok(json!("pc-i440fx-7.2-machine")), vec![]);
            }
            let Some(d) = resolve_dev(&g, &path) else {
                return (Err(("DeviceNotFound".into(), format!("Device '{path}' not found"))), vec![]);
            };
            let val = match prop.as_str() {
                "type" => Some(json!(d.driver)),
                "realized" => Some(json!(true)),
                "parent_bus" => Some(match &d.bus {
                    Some(b) => json!(format!("/machine/peripheral/{}/{b}", b.trim_end_matches(".0"))),
                    None => json!("/machine/i440fx/pci.0"),
                }),
                p if is_controller(&d.driver) => match p {
                    "p2" | "p3" => Some(d.props.get(p).cloned().unwrap_or(json!(4))),
                    _ => None,
                },
                "port" | "hostport" | "hostdevice" => Some(d.props.get(prop.as_str()).cloned().unwrap_or(json!(""))),
                "hostbus" | "hostaddr" | "vendorid" | "productid" => {
                    Some(d.props.get(prop.as_str()).cloned().unwrap_or(json!(0)))
                }
                "attached" => Some(d.props.get("attached").cloned().unwrap_or(json!(false))),
                _ => None,
            };
            match val {
                Some(v) => (Ok(v), vec![]),
                None => (gerr(format!("Property '{}.{prop}' not found", d.driver)), vec![]),
            }
        }
        other => (Err(("CommandNotFound".into(), format!("The command {other} has not been found"))), vec![]),
    }
}

/// "xenusb-0.0" or "/machine/peripheral/xenusb-0/xenusb-0.0" -> "xenusb-0.0" when that bus exists.
pub(crate) fn resolve_bus(g: &FakeShared, path: &str) -> Option<String> {
    g.devices.iter().filter(|d| is_controller(&d.driver) && !d.id.is_empty()).find_map(|c| {
        let bus = format!("{}.0", c.id);
        (path == bus || path == format!("/machine/peripheral/{}/{bus}", c.id)).then_some(bus)
    })
}

/// "/machine/peripheral/<id>" or a bare "<id>" (QEMU resolves partial paths).
pub(crate) fn resolve_dev<'a>(g: &'a FakeShared, path: &str) -> Option<&'a FakeDev> {
    let id = path.strip_prefix("/machine/peripheral/").unwrap_or(path);
    g.devices.iter().find(|d| !d.id.is_empty() && d.id == id)
}

/// Real QEMU 7.2's `query-pci` and `qom-list /machine/unattached` for `-M pc -nodefaults`.
pub(crate) fn pc_nodefaults() -> Value {
    serde_json::from_str(include_str!("../fixtures/qemu-7.2-pc-nodefaults.json")).expect("fixture is JSON")
}
