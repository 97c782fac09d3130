//! auto-usb-attach: make USB devices follow the user into a VM.
//!
//! One-shot: run by a udev rule per USB device event (or by hand), it takes a
//! lock, reads its state, talks QMP to the VM's QEMU, writes state and exits.
//! `main` only maps the outcome to an exit code: 0 ok, 1 failure, 2 usage.

use auto_usb_attach::{cli, cmd};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let args = cli::Cli::as_invoked(std::env::args_os().collect());
    let parsed = cli::Cli::parse_rule_line(&args).map(Ok).unwrap_or_else(|| cli::Cli::try_parse_from(&args));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match cmd::run_from(cli, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_logged() {
                ::log::error!("{e:#}");
            }
            if ::log::max_level() < ::log::LevelFilter::Error {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}
