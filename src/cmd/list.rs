//! `list`: host USB devices, where each is attached and which VM wants it.
//! Read-only: no lock (state is replaced atomically), works without root.

use crate::ctx::Ctx;
use crate::error::Result;
use crate::host::{self, HostDevice};
use crate::state::{Attached, State};
use crate::{events, plan};
use serde_json::{json, Value};

/// A present host device (or, None, one state still lists that is gone from
/// the host), where it is attached, and which VM's rules want it.
type Row<'a> = (Option<&'a HostDevice>, Option<(&'a str, &'a Attached)>, Option<String>);

pub(super) fn list(ctx: &Ctx, as_json: bool) -> Result<()> {
    let devices = host::scan(&ctx.root)?;
    let state = ctx.peek_state();
    let mut rows: Vec<Row<'_>> = Vec::new();
    for d in &devices {
        let route = events::route(&ctx.config, d).map(|i| ctx.config.vms[i].name.clone());
        rows.push((Some(d), state.find(d.bus, d.addr), route));
    }
    for (vm, v) in &state.vms {
        for a in &v.devices {
            if !devices.iter().any(|d| (d.bus, d.addr) == (a.bus, a.addr)) {
                rows.push((None, Some((vm.as_str(), a)), None));
            }
        }
    }
    if as_json {
        let arr: Vec<Value> = rows.iter().map(|r| json_row(&state, r)).collect();
        println!("{}", serde_json::to_string_pretty(&arr).expect("serialises"));
    } else {
        println!("{:<8} {:<9} {:<10} {:>6}  {:<28} ATTACHED", "BUS:ADDR", "ID", "PORT", "SPEED", "NAME");
        for r in &rows {
            println!("{}", text_row(&state, r));
        }
        // As last seen by the tool (list talks to no VM).
        for (vm, v) in state.vms.iter().filter(|(_, v)| !v.controllers.is_empty()) {
            println!("VM {vm} controllers: {}", plan::describe_controllers(v).join("; "));
        }
    }
    Ok(())
}

fn json_row(state: &State, (d, at, route): &Row<'_>) -> Value {
    let mut o = match d {
        Some(d) => {
            let mut o = serde_json::to_value(d).expect("serialises");
            // Numbers as numbers: Mb/s (1.5, 12, 480, 5000); null if unreadable.
            o["speed"] = speed_number(&d.speed);
            o["hub"] = json!(d.is_hub() || d.is_root_hub());
            o
        }
        None => {
            let a = at.expect("gone devices are attached").1;
            json!({ "bus": a.bus, "addr": a.addr, "port-path": a.port_path, "gone-from-host": true })
        }
    };
    o["wanted-by"] = json!(route);
    o["held-out"] = json!(d.is_some_and(|d| state.is_held_out(d.bus, d.addr)));
    o["attached"] = match at {
        Some((vm, a)) => {
            json!({ "vm": vm, "id": a.id, "controller": a.controller, "port": a.port, "origin": a.origin })
        }
        None => json!(null),
    };
    o
}

/// sysfs speed "480" as 480, "1.5" as 1.5.
fn speed_number(s: &str) -> Value {
    match s.trim().parse::<f64>() {
        Ok(v) if v.fract() == 0.0 && v >= 0.0 => json!(v as u64),
        Ok(v) if v.is_finite() => json!(v),
        _ => Value::Null,
    }
}

/// The NAME column: hubs are marked, as they are never passed to a VM.
fn name_cell(d: &HostDevice) -> String {
    let name = d.name.as_deref().or(d.manufacturer.as_deref()).unwrap_or("");
    let name = if d.is_hub() || d.is_root_hub() { format!("[hub] {name}") } else { name.to_string() };
    name.chars().take(28).collect()
}

fn text_row(state: &State, (d, at, route): &Row<'_>) -> String {
    let attached = match at {
        Some((vm, a)) if a.origin == crate::state::Origin::Xl => {
            format!("{vm} {} port {} ({}, by xl)", a.controller, a.port, a.id)
        }
        Some((vm, a)) => format!("{vm} {} port {} ({})", a.controller, a.port, a.id),
        None if d.is_some_and(|d| state.is_held_out(d.bus, d.addr)) => "- (detached by hand)".into(),
        None => match route {
            Some(vm) => format!("- (wanted by {vm})"),
            None => "-".into(),
        },
    };
    match d {
        Some(d) => {
            format!(
                "{:<8} {:<9} {:<10} {:>6}  {:<28} {attached}",
                d.at().to_string(),
                d.id_string(),
                d.port_path,
                d.speed,
                name_cell(d)
            )
        }
        None => {
            let a = at.expect("gone devices are attached").1;
            format!(
                "{:<8} {:<9} {:<10} {:>6}  {:<28} {attached}",
                a.at().to_string(),
                a.usb_id,
                a.port_path,
                "",
                "(gone from host)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_are_numbers_and_hubs_are_marked() {
        assert_eq!(speed_number("480"), json!(480));
        assert_eq!(speed_number("1.5"), json!(1.5));
        assert_eq!(speed_number("5000\n"), json!(5000));
        assert_eq!(speed_number("?"), Value::Null);
        assert_eq!(serde_json::to_string(&speed_number("12")).unwrap(), "12");
        let mut hub = HostDevice::fixture(1, 3, "1-4", 0x05e3, 0x0608);
        hub.class = 9;
        hub.name = Some("USB2.0 Hub".into());
        assert_eq!(name_cell(&hub), "[hub] USB2.0 Hub");
        let root = HostDevice::fixture(1, 1, "usb1", 0x1d6b, 0x0002);
        assert!(name_cell(&root).starts_with("[hub]"));
        let dev = HostDevice::fixture(1, 2, "1-4.2", 0x046d, 0xc52b);
        let row = text_row(&State::default(), &(Some(&dev), None, None));
        assert!(row.starts_with("1:2      046d:c52b 1-4.2"), "{row:?}");
    }
}
