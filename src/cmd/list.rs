//! `list`: host USB devices, where each is attached and which VM wants it.
//! Read-only: no lock (state is replaced atomically), works without root.

use crate::ctx::Ctx;
use crate::error::Result;
use crate::host::{self, HostDevice};
use crate::plan;
use crate::state::{Attached, State};
use serde_json::{json, Value};

/// A present host device (or, None, one state still lists that is gone from
/// the host), where it is attached, and which VM's rules want it.
type Row<'a> = (Option<&'a HostDevice>, Option<(&'a str, &'a Attached)>, Option<String>);

pub fn list(ctx: &Ctx, as_json: bool) -> Result<()> {
    let devices = host::scan(&ctx.root)?;
    let state = ctx.peek_state();
    let mut rows: Vec<Row<'_>> = Vec::new();
    for d in &devices {
        let route = plan::route(&ctx.config, d).map(|i| ctx.config.vms[i].name.clone());
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
    }
    Ok(())
}

fn json_row(state: &State, (d, at, route): &Row<'_>) -> Value {
    let mut o = match d {
        Some(d) => serde_json::to_value(d).expect("serialises"),
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
            let name: String = d.name.as_deref().or(d.manufacturer.as_deref()).unwrap_or("").chars().take(28).collect();
            format!(
                "{:03}:{:03}  {:<9} {:<10} {:>6}  {:<28} {attached}",
                d.bus,
                d.addr,
                d.id_string(),
                d.port_path,
                d.speed,
                name
            )
        }
        None => {
            let a = at.expect("gone devices are attached").1;
            format!(
                "{:03}:{:03}  {:<9} {:<10} {:>6}  {:<28} {attached}",
                a.bus, a.addr, a.usb_id, a.port_path, "", "(gone from host)"
            )
        }
    }
}
