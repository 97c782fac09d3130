//! The commands, one file each; `run` loads the config, refuses unsafe
//! setups and dispatches. Commands execute what the pure planners decide,
//! through `apply` and `Session`; they share `ctx::Ctx`.

pub mod check;
pub mod list;
pub mod manual;
pub mod sync;
pub mod udev;

use crate::cli::{Cli, Command};
use crate::config;
use crate::ctx::Ctx;
use crate::deadline::Deadline;
use crate::error::Result;
use crate::root::Root;

/// `started`: when the process started; the budget counts from there, so
/// config and log I/O draw on it too.
pub fn run(cli: Cli) -> Result<()> {
    run_from(cli, std::time::Instant::now())
}

pub fn run_from(cli: Cli, started: std::time::Instant) -> Result<()> {
    let root = Root::new(cli.root.clone().unwrap_or_else(|| "/".into()));
    crate::log::init(&root, cli.verbose);
    let config_path = root.path(&cli.config);
    let config = match config::load(&config_path, &cli.config) {
        Ok(c) => c,
        // Listing the host side needs no config.
        Err(e) if matches!(cli.command, Command::List { .. }) && !config_path.exists() => {
            log::debug!("{e}");
            config::parse_str("", "(none)")?
        }
        Err(e) => return Err(e),
    };
    if let Some(f) = &config.log_file {
        crate::log::add_file(root.path(f));
    }
    // Whoever can write the config or state decides what VMs get: refuse to
    // act on them (check reports it; list only reads).
    if !matches!(cli.command, Command::List { .. } | Command::Check) {
        // Parents included, through symlinks; the state dir itself must not
        // be a symlink nor a sticky shared dir like /tmp.
        for (what, shown, is_dir) in [("config", &cli.config, false), ("state dir", &config.state_dir, true)] {
            if let Some(why) = crate::fsio::unsafe_path(&root.path(shown), is_dir) {
                crate::bail!("refusing to run: {what} {} is {why}", shown.display());
            }
        }
    }
    let ctx = Ctx { deadline: Deadline::starting_at(started, config.timeout), root, config, dry_run: false };
    match cli.command {
        Command::Udev => udev::udev(&ctx, &std::env::vars().collect()),
        Command::Attach { dev, vm } => manual::attach(&ctx, dev.bus, dev.addr, vm.as_deref()),
        Command::Detach { target, vm } => manual::detach(&ctx, &target, vm.as_deref()),
        Command::List { json } => list::list(&ctx, json),
        Command::Sync { vm } => sync::sync(&ctx, vm.as_deref()),
        Command::Check => check::check(&ctx, &cli.config),
    }
}
