//! The commands, one file each; `run` loads the config, refuses unsafe
//! setups and dispatches. Commands execute what the pure planners decide,
//! through `apply` and `Session`; they share `ctx::Ctx`.

mod check;
mod generator;
mod list;
mod manual;
mod sync;
mod udev;

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
    if let Command::Completions { shell } = cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "auto-usb-attach", &mut std::io::stdout());
        return Ok(());
    }
    require_root(&cli)?;
    let root = Root::new(cli.root.clone().unwrap_or_else(|| "/".into()));
    crate::log::init(&root, cli.verbose);
    // A missing config is no error to a generator (the units need one to run).
    if let Command::SystemdGenerator { dirs } = &cli.command {
        return generator::generate(&root, &cli.config, &dirs[0]);
    }
    let config_path = root.path(&cli.config);
    let config = match config::load(&config_path, &cli.config) {
        Ok(c) => c,
        // Listing the host side needs no config.
        Err(e) if matches!(cli.command, Command::List { .. }) && !config_path.exists() => {
            log::debug!("{e:#}");
            config::parse_str("", "(none)")?
        }
        // `check --json` always prints one JSON document, a broken config included.
        Err(e) if matches!(cli.command, Command::Check { json: true }) => {
            let mut report = crate::report::Report::default();
            report.push_error("config", &e);
            println!("{}", serde_json::to_string_pretty(&report.json()).expect("serialises"));
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let Some(f) = &config.log_file {
        crate::log::add_file(root.path(f));
    }
    // Whoever can write the config or state decides what VMs get: refuse to
    // act on them (check reports it; list only reads).
    if cli.command.changes_things() {
        // Parents included, through symlinks; the state dir itself must not
        // be a symlink nor a sticky shared dir like /tmp.
        let (config_at, state_at) = (root.path(&cli.config), root.path(&config.state_dir));
        if let Some((i, why)) = crate::fsio::unsafe_paths(&[(&config_at, false), (&state_at, true)]) {
            let (what, shown) = [("config", &cli.config), ("state dir", &config.state_dir)][i];
            crate::bail!("refusing to run: {what} {} is {why}", shown.display());
        }
    }
    let dry_run = cli.command.dry_run();
    let ctx = Ctx {
        deadline: Deadline::starting_at(started, config.timeout),
        root,
        config,
        dry_run,
        xen_names: Default::default(),
        outcomes: Default::default(),
        serve: Some(udev::serve),
    };
    let done = match cli.command {
        Command::Udev { .. } => udev::udev(&ctx, &std::env::vars().collect()),
        Command::Attach { dev, vm, .. } => manual::attach(&ctx, &dev, vm.as_deref()),
        Command::Detach { target, vm, .. } => manual::detach(&ctx, &target, vm.as_deref()),
        Command::List { json } => list::list(&ctx, json),
        Command::Sync { vm, .. } => sync::sync(&ctx, vm.as_deref()),
        Command::Check { json } => check::check(&ctx, &cli.config, json),
        Command::Completions { .. } | Command::SystemdGenerator { .. } => Ok(()),
    };
    // A device refused is one outcome and one line: the error's, with the
    // outcome's journal fields (MESSAGE_ID, VM, USB_*).
    let done = done.map_err(|e| {
        let text = format!("{e:#}");
        let outcomes = ctx.outcomes.borrow();
        match outcomes.iter().find(|o| o.event == crate::outcome::Event::Refused && o.reason == text) {
            Some(o) => {
                let _fields = crate::log::scope(&o.journal_fields());
                log::error!("{text}");
                e.mark_logged()
            }
            None => e,
        }
    });
    // The hook, once per outcome, after the state lock is released (other
    // events must not wait on it) and within what is left of the budget. It
    // never changes the outcome or the exit code; a dry run has no outcomes
    // to tell and runs none.
    if !ctx.config.hook.is_empty() && !ctx.dry_run {
        crate::hook::run_all(&ctx.root, &ctx.config.hook, &ctx.outcomes.take(), &ctx.deadline);
    }
    done
}

/// Commands that change VMs or state need root: say so up front instead
/// of failing later on the lock or a socket with "Permission denied".
///
/// Under `--root DIR` (tests, the demo) every path lives under DIR, so the
/// kernel's own permission checks on those files are what matter, and the
/// check is skipped. That opens no hole: this check is for a clear message,
/// not a barrier; the barrier is the modes of the state dir, the lock and
/// the QMP sockets, which `--root` cannot change for a user who could not
/// already write them.
fn require_root(cli: &Cli) -> Result<()> {
    if cli.command.changes_things() && cli.root.is_none() && !nix::unistd::geteuid().is_root() {
        crate::bail!("must be run as root (it talks to VMs over QMP and keeps state under the lock)");
    }
    Ok(())
}
