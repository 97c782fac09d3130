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

pub fn run(cli: Cli) -> Result<()> {
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
        for (what, shown) in [("config", &cli.config), ("state dir", &config.state_dir)] {
            if let Some(why) = check::writable_by_others(&root.path(shown)) {
                crate::bail!("refusing to run: {what} {} is {why}", shown.display());
            }
        }
    }
    let ctx = Ctx { deadline: Deadline::after(config.timeout), root, config, dry_run: false };
    match cli.command {
        Command::Udev => udev::udev(&ctx, &std::env::vars().collect()),
        Command::Attach { dev, vm } => manual::attach(&ctx, dev.bus, dev.addr, vm.as_deref()),
        Command::Detach { target, vm } => manual::detach(&ctx, &target, vm.as_deref()),
        Command::List { json } => list::list(&ctx, json),
        Command::Sync { vm } => sync::sync(&ctx, vm.as_deref()),
        Command::Check => check::check(&ctx, &cli.config),
    }
}
