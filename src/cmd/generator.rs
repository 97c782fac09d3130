//! `systemd-generator` (run by systemd as `auto-usb-attach-generator`, at
//! boot and at every `systemctl daemon-reload`): a drop-in for the sync path
//! unit that watches the directory of each plain QEMU VM's QMP socket, so a
//! device plugged before such a VM starts goes in as it starts, as it does
//! for Xen and libvirt domains (whose directories the shipped unit watches),
//! instead of at the timer's next sync. `drop_in` decides the text from the
//! config; `generate` writes it.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::root::Root;
use std::path::Path;

/// The unit the drop-in extends, and the drop-in's name in its `.d`.
const UNIT: &str = "auto-usb-attach-sync.path";
const DROP_IN: &str = "50-plain-vm-sockets.conf";

/// The drop-in for `config`, or None when no VM is a plain QEMU VM. A
/// directory that systemd would read otherwise than meant (a control
/// character or a backslash, `..`, space at either end) is an error naming
/// its VM; `%` is written as `%%` (systemd's specifiers).
fn drop_in(config: &Config, config_shown: &Path) -> Result<Option<String>> {
    let mut dirs: Vec<&str> = Vec::new();
    for vm in &config.vms {
        let Some(dir) = vm.qmp_dir() else { continue };
        if vm.watched_qmp_dir().is_none() {
            log::warn!(
                "VM {}: not watching {} for its QMP socket (every service writes there: each change would start a \
                 sync); give its socket a directory of its own, e.g. /run/qemu/",
                vm.name,
                dir.display()
            );
            continue;
        }
        let text = dir.to_str().filter(|d| {
            !d.chars().any(|c| c.is_control() || c == '\\')
                && d.trim() == *d
                && !dir.components().any(|c| c == std::path::Component::ParentDir)
        });
        let Some(text) = text else {
            return Err(Error::new(format!(
                "VM {}: its QMP socket's directory {:?} cannot be watched by {UNIT} (a control character, a \
                 backslash, `..` or space at either end)",
                vm.name, dir
            )));
        };
        if !dirs.contains(&text) {
            dirs.push(text);
        }
    }
    if dirs.is_empty() {
        return Ok(None);
    }
    let mut out = format!(
        "# Written by auto-usb-attach-generator from {}: the directory of each plain\n\
         # QEMU VM's QMP socket, so that sync runs as the VM starts. Made again at every\n\
         # boot and `systemctl daemon-reload`; edit the config, not this file.\n[Path]\n",
        config_shown.display()
    );
    for d in dirs {
        out.push_str(&format!("PathChanged={}\n", d.replace('%', "%%")));
    }
    Ok(Some(out))
}

/// Write the drop-in into `out` (the generator's normal directory, which
/// systemd empties before every run). No config: nothing to do (the units
/// are conditioned on it). A config that does not parse is an error, and
/// nothing is written.
pub(super) fn generate(root: &Root, config: &Path, out: &Path) -> Result<()> {
    if !root.path(config).exists() {
        log::debug!("{}: no config; nothing to generate", config.display());
        return Ok(());
    }
    let loaded = crate::config::load(&root.path(config), config)?;
    let Some(text) = drop_in(&loaded, config)? else {
        log::debug!("{}: no plain QEMU VM; nothing to generate", config.display());
        return Ok(());
    };
    let dir = crate::fsio::Dir::create_as(&out.join(format!("{UNIT}.d")), "generator directory")?;
    let written = dir.write_atomic(DROP_IN, text.as_bytes(), crate::fsio::FILE_MODE);
    written.map_err(|e| Error::caused(format!("cannot write {}", dir.shown(DROP_IN)), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn one_line_per_plain_vm_socket_directory_escaped_and_only_plain_vms() {
        let c = parse_str(
            "[[vm]]\nname = \"a\"\nqmp = \"/run/qemu/a.qmp\"\n[[vm]]\nname = \"b\"\nqmp = \"/run/qemu/b.qmp\"\n\
             [[vm]]\nname = \"x\"\n[[vm]]\nname = \"c\"\nqmp = \"/run/q 100%/c.qmp\"\n",
            "t",
        )
        .unwrap();
        let text = drop_in(&c, Path::new("/etc/auto-usb-attach.toml")).unwrap().unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["[Path]", "PathChanged=/run/qemu", "PathChanged=/run/q 100%%"]);
        // What `check` reads back is what the generator meant.
        assert_eq!(super::super::check::watched_paths(&[text]), ["/run/qemu", "/run/q 100%"]);
        let xen = parse_str("[[vm]]\nname = \"x\"\n", "t").unwrap();
        assert_eq!(drop_in(&xen, Path::new("t")).unwrap(), None);
    }

    #[test]
    fn a_socket_directly_in_a_directory_every_service_writes_in_is_not_watched() {
        let c =
            parse_str("[[vm]]\nname = \"a\"\nqmp = \"/run/a.qmp\"\n[[vm]]\nname = \"b\"\nqmp = \"/tmp/b.qmp\"\n", "t")
                .unwrap();
        assert_eq!(drop_in(&c, Path::new("t")).unwrap(), None);
    }

    #[test]
    fn a_directory_systemd_would_misread_is_an_error_naming_the_vm() {
        for bad in ["/run/a\\nb/s.qmp", "/run/a\\\\b/s.qmp", "/run/../x/s.qmp", "/run/x /s.qmp"] {
            let c = parse_str(&format!("[[vm]]\nname = \"v\"\nqmp = \"{bad}\"\n"), "t").unwrap();
            let e = drop_in(&c, Path::new("t")).unwrap_err().to_string();
            assert!(e.starts_with("VM v: its QMP socket's directory"), "{bad}: {e}");
        }
    }
}
