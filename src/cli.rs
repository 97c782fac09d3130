//! Command-line surface. Parsing only; `cmd` does the work.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "auto-usb-attach",
    version,
    about = "Attach host USB devices to Xen and QEMU/KVM guests over QMP, driven by udev"
)]
pub struct Cli {
    /// Resolve every OS path (config, state, /sys, /dev, sockets) under DIR.
    #[arg(long, global = true, value_name = "DIR", env = "AUTO_USB_ATTACH_ROOT")]
    pub root: Option<PathBuf>,
    /// Config file.
    #[arg(long, global = true, value_name = "FILE", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Handle one udev event (run by the udev rule; reads ACTION, BUSNUM, DEVNUM, DEVPATH, ... from the environment).
    Udev,
    /// Attach a host device to a VM by hand.
    Attach {
        #[command(flatten)]
        dev: BusAddr,
        /// The VM (default: the one the config routes the device to, or the only one).
        #[arg(long)]
        vm: Option<String>,
    },
    /// Detach a device from its VM by hand.
    Detach {
        #[command(flatten)]
        target: DetachTarget,
        /// Only look in this VM.
        #[arg(long)]
        vm: Option<String>,
    },
    /// Make every running VM hold exactly what the config routes to it
    /// (cold-plugged devices, after a VM restart, after missed unplugs).
    Sync {
        /// Only this VM.
        #[arg(long)]
        vm: Option<String>,
    },
    /// Check the config, its permissions, the installed rule and units, and each VM.
    Check,
    /// List host USB devices and where each is attached.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BusAddr {
    /// Host USB bus number (lsusb's "Bus").
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=999))]
    pub bus: u16,
    /// Host USB device address (lsusb's "Device").
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=127))]
    pub addr: u16,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct DetachTarget {
    #[arg(long, requires = "addr", conflicts_with = "id", value_parser = clap::value_parser!(u16).range(1..=999))]
    pub bus: Option<u16>,
    #[arg(long, requires = "bus", conflicts_with = "id", value_parser = clap::value_parser!(u16).range(1..=127))]
    pub addr: Option<u16>,
    /// QEMU device id, e.g. xenusb-3-7.
    #[arg(long)]
    pub id: Option<String>,
}
