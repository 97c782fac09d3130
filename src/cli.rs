//! Command-line surface. Parsing only; `cmd` does the work.
//!
//! Global options sit under their own help heading; `--root` (tests and the
//! demo re-home every OS path with it) is hidden but works, as does its
//! environment variable.

use crate::selector::{Selector, FORMS};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "auto-usb-attach",
    version,
    about = "Attach host USB devices to Xen and QEMU/KVM guests over QMP, driven by udev",
    after_help = "A DEVICE is BUS:ADDR as lsusb shows it (3:7), a port path (1-4.2, stays the same when the \
                  device is replugged into the same socket) or VENDOR:PRODUCT[:SERIAL] (046d:c52b)."
)]
pub struct Cli {
    /// Resolve every OS path (config, state, /sys, /dev, sockets) under DIR (tests and demos).
    #[arg(long, global = true, hide = true, value_name = "DIR", env = "AUTO_USB_ATTACH_ROOT")]
    pub root: Option<PathBuf>,
    /// The config file.
    #[arg(long, global = true, value_name = "FILE", default_value = crate::config::DEFAULT_PATH, help_heading = GLOBAL)]
    pub config: PathBuf,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Handle one udev event (run by the udev rule; reads ACTION, BUSNUM, DEVNUM, DEVPATH, ... from the environment).
    Udev {
        #[command(flatten)]
        dry: DryRun,
    },
    /// Attach a host device to a VM by hand.
    #[command(override_usage = "auto-usb-attach attach [OPTIONS] <DEVICE | --bus <N> --addr <N>>")]
    Attach {
        #[command(flatten)]
        dev: DeviceArgs,
        /// The VM (default: the one the config routes the device to, or the only one).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[command(flatten)]
        dry: DryRun,
    },
    /// Detach a device from its VM by hand (kept out until it is unplugged, if a rule wants it).
    #[command(override_usage = "auto-usb-attach detach [OPTIONS] <DEVICE | --bus <N> --addr <N> | --id <ID>>")]
    Detach {
        #[command(flatten)]
        target: DetachTarget,
        /// Only look in this VM.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[command(flatten)]
        dry: DryRun,
    },
    /// Make every running VM hold exactly what the config routes to it
    /// (cold-plugged devices, after a VM restart, after missed unplugs).
    Sync {
        /// Only this VM.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[command(flatten)]
        dry: DryRun,
    },
    /// Check the config, its permissions, the installed rule and units, and each VM.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List host USB devices and where each is attached.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// As a systemd generator (systemd.generator(7)): add the directory of each plain QEMU VM's QMP
    /// socket to the sync path unit, in a drop-in under DIR. Run by systemd at boot and at every
    /// `systemctl daemon-reload` through the link auto-usb-attach-generator.
    #[command(hide = true, name = "systemd-generator")]
    SystemdGenerator {
        /// The generator's output directories (normal, early, late); the drop-in goes in the first.
        #[arg(value_name = "DIR", num_args = 1..=3, required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The name of the link systemd runs as a generator (`systemd-generator`).
pub const GENERATOR_NAME: &str = "auto-usb-attach-generator";

impl Cli {
    /// The command line as clap reads it: run as `auto-usb-attach-generator
    /// DIR...` (systemd calls generators by their path, with their output
    /// directories only), it is `auto-usb-attach systemd-generator DIR...`.
    pub fn as_invoked(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
        let name = args.first().map(std::path::Path::new).and_then(|p| p.file_name());
        if name.is_some_and(|n| n == GENERATOR_NAME) {
            args.insert(1, "systemd-generator".into());
        }
        args
    }

    /// The udev rule's own command line, `[--root DIR] [--config FILE] [-v]
    /// udev` in any order, read without building clap's command tree: every
    /// event pays for that build, and under TCG it was a fifth of the tool's
    /// CPU per event (`make bench-rig`). Anything else (another command, an
    /// option more or repeated, `--help`, `AUTO_USB_ATTACH_ROOT` set) is
    /// None: clap parses it. A test holds both parsers to the same result.
    pub fn parse_rule_line(args: &[std::ffi::OsString]) -> Option<Cli> {
        if std::env::var_os("AUTO_USB_ATTACH_ROOT").is_some() {
            return None;
        }
        let (mut root, mut config, mut verbose, mut udev) = (None, None, 0u8, false);
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            let a = a.to_str()?;
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ => (a, None),
            };
            let slot = match flag {
                "udev" if !udev && inline.is_none() => {
                    udev = true;
                    continue;
                }
                "-v" | "--verbose" if inline.is_none() && verbose == 0 => {
                    verbose += 1;
                    continue;
                }
                "--config" if config.is_none() => &mut config,
                "--root" if root.is_none() => &mut root,
                _ => return None,
            };
            let value = match inline {
                Some(v) => v,
                None => it.next()?.to_str()?,
            };
            if value.is_empty() || value.starts_with('-') {
                return None;
            }
            *slot = Some(PathBuf::from(value));
        }
        udev.then(|| Cli {
            root,
            config: config.unwrap_or_else(|| crate::config::DEFAULT_PATH.into()),
            verbose,
            command: Command::Udev { dry: DryRun { dry_run: false } },
        })
    }
}

impl Command {
    /// Whether this command changes VMs or state (and so needs root).
    pub fn changes_things(&self) -> bool {
        matches!(self, Command::Udev { .. } | Command::Attach { .. } | Command::Detach { .. } | Command::Sync { .. })
    }

    pub fn dry_run(&self) -> bool {
        match self {
            Command::Udev { dry }
            | Command::Attach { dry, .. }
            | Command::Detach { dry, .. }
            | Command::Sync { dry, .. } => dry.dry_run,
            _ => false,
        }
    }
}

#[derive(Debug, Args)]
pub struct DryRun {
    /// Print the QMP commands it would send, and change nothing (no VM, no state).
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct DeviceArgs {
    #[arg(value_name = "DEVICE", help = format!("The device: {FORMS}"), conflicts_with_all = ["bus", "addr"])]
    pub device: Option<Selector>,
    /// Host USB bus number (lsusb's "Bus"); with --addr.
    #[arg(long, value_name = "N", requires = "addr", value_parser = clap::value_parser!(u16).range(1..=999))]
    pub bus: Option<u16>,
    /// Host USB device address (lsusb's "Device"); with --bus.
    #[arg(long, value_name = "N", requires = "bus", value_parser = clap::value_parser!(u16).range(1..=127))]
    pub addr: Option<u16>,
}

impl DeviceArgs {
    /// The selector given, as the positional or as --bus/--addr.
    pub fn selector(&self) -> Option<Selector> {
        match (&self.device, self.bus, self.addr) {
            (Some(s), _, _) => Some(s.clone()),
            (None, Some(b), Some(a)) => Some(Selector::BusAddr(crate::types::BusAddr::new(b, a))),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct DetachTarget {
    #[arg(value_name = "DEVICE", help = format!("The device: {FORMS}"), conflicts_with_all = ["bus", "addr", "id"])]
    pub device: Option<Selector>,
    /// Host USB bus number (lsusb's "Bus"); with --addr.
    #[arg(long, value_name = "N", requires = "addr", conflicts_with = "id", value_parser = clap::value_parser!(u16).range(1..=999))]
    pub bus: Option<u16>,
    /// Host USB device address (lsusb's "Device"); with --bus.
    #[arg(long, value_name = "N", requires = "bus", conflicts_with = "id", value_parser = clap::value_parser!(u16).range(1..=127))]
    pub addr: Option<u16>,
    /// The device's id in the VM, e.g. xenusb-3-7 (ua-aua-3-7 in a libvirt domain), for a device already gone from the host.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("auto-usb-attach").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn devices_by_selector_or_bus_and_addr() {
        let Command::Attach { dev, .. } = parse(&["attach", "1-4.2"]).unwrap().command else { panic!() };
        assert_eq!(dev.selector(), Some(Selector::Port("1-4.2".into())));
        let Command::Attach { dev, dry, .. } =
            parse(&["attach", "--bus", "3", "--addr", "7", "--dry-run"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(dev.selector(), Some("3:7".parse().unwrap()));
        assert!(dry.dry_run);
        for bad in [
            &["attach"][..],
            &["attach", "--bus", "3"],
            &["attach", "3:7", "--bus", "3", "--addr", "7"],
            &["attach", "3:x"],
            &["detach"],
            &["detach", "--addr", "7"],
            &["detach", "3:7", "--id", "xenusb-3-7"],
            &["detach", "--bus", "3", "--addr", "7", "--id", "xenusb-3-7"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?} parsed");
        }
        assert!(parse(&["detach", "--id", "xenusb-3-7"]).is_ok());
        assert!(parse(&["detach", "046d:c52b:XYZ", "--dry-run"]).is_ok());
    }

    #[test]
    fn every_argument_has_help_and_root_is_hidden() {
        let cli = Cli::command();
        let mut cmds = vec![&cli];
        cmds.extend(cli.get_subcommands());
        for c in cmds {
            for a in c.get_arguments() {
                if a.get_id() == "help" || a.get_id() == "version" {
                    continue;
                }
                assert!(a.get_help().is_some(), "{} {} has no help", c.get_name(), a.get_id());
            }
        }
        let help = cli.clone().render_help().to_string();
        assert!(help.contains("Global options:") && !help.contains("--root"), "{help}");
        assert!(parse(&["--root", "/tmp/x", "list"]).unwrap().root.is_some());
    }

    #[test]
    fn the_rule_line_reads_as_clap_reads_it_and_anything_else_goes_to_clap() {
        let v = |a: &[&str]| -> Vec<std::ffi::OsString> { a.iter().map(Into::into).collect() };
        for args in [
            &["aua", "udev"][..],
            &["aua", "--config", "/etc/auto-usb-attach.toml", "udev"],
            &["aua", "udev", "--config", "/x.toml"],
            &["aua", "--config=/x.toml", "udev", "-v"],
            &["aua", "--root", "/r", "--config", "c.toml", "udev", "--verbose"],
            &["aua", "--root=/r", "udev"],
        ] {
            let fast = Cli::parse_rule_line(&v(args)).unwrap_or_else(|| panic!("{args:?} not read"));
            let slow = Cli::try_parse_from(v(args)).unwrap();
            assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{args:?}");
        }
        for args in [
            &["aua"][..],
            &["aua", "udev", "--dry-run"],
            &["aua", "udev", "udev"],
            &["aua", "--config", "udev"],
            &["aua", "--config"],
            &["aua", "--config", "a", "--config", "b", "udev"],
            &["aua", "--config=", "udev"],
            &["aua", "-vvv", "udev"],
            &["aua", "-v", "udev", "-v"],
            &["aua", "--help"],
            &["aua", "attach", "--bus", "3", "--addr", "7"],
            &["aua", "--", "udev"],
            &["aua", "udev=1"],
        ] {
            assert!(Cli::parse_rule_line(&v(args)).is_none(), "{args:?} must go to clap");
        }
    }
}
