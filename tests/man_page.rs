//! auto-usb-attach(8) against the CLI it documents: the built binary's
//! `--help` and each command's `--help` are read, and the page's SYNOPSIS,
//! COMMANDS and OPTIONS must name exactly the commands and options clap knows.
//! An option added to the CLI and not to the page (or left on the page after
//! it went from the CLI) fails here, naming it.

use std::collections::BTreeSet;

const BIN: &str = env!("CARGO_BIN_EXE_auto-usb-attach");
const PAGE: &str = include_str!("../man/auto-usb-attach.8");

fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN).env_clear().args(args).output().expect("the binary runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// One `.SH NAME` section of the page, without its heading.
fn section(name: &str) -> &'static str {
    let start = PAGE.find(&format!(".SH {name}\n")).unwrap_or_else(|| panic!("the page has no {name} section"));
    let rest = &PAGE[start + name.len() + 5..];
    &rest[..rest.find("\n.SH ").unwrap_or(rest.len())]
}

/// Options (without their dashes: `dry-run`, `v`) in a roff fragment: `\-\-dry\-run`, `\-v`.
fn roff_options(text: &str) -> BTreeSet<String> {
    let mut t = text.replace("\\-", "-");
    for font in ["\\fB", "\\fI", "\\fR", "\\fP"] {
        t = t.replace(font, " ");
    }
    options_in(&t)
}

/// `--long` and `-s` options in plain text (`-` inside a word, as in `dry-run`, is not one).
fn options_in(t: &str) -> BTreeSet<String> {
    let b = t.as_bytes();
    let mut out = BTreeSet::new();
    for (i, _) in t.match_indices('-') {
        let starts = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-');
        if !starts {
            continue;
        }
        let (from, long) = if t[i + 1..].starts_with('-') { (i + 2, true) } else { (i + 1, false) };
        let name: String = t[from..].chars().take_while(|c| c.is_ascii_alphanumeric() || (long && *c == '-')).collect();
        if !name.is_empty() && (long || name.len() == 1) {
            out.insert(name);
        }
    }
    out
}

/// The options `--help` lists under `heading` ("Options:" or "Global options:").
fn help_options(help: &str, heading: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for l in help.lines() {
        if !l.starts_with(' ') {
            inside = l == heading;
            continue;
        }
        // "  -v, --verbose...  More logging": the option column ends at two spaces.
        if inside && l.trim_start().starts_with('-') {
            out.extend(options_in(l.trim_start().split("  ").next().unwrap_or("")));
        }
    }
    out
}

/// The commands `--help` lists, plus the hidden `completions` (documented on the page).
fn commands() -> Vec<String> {
    let top = help(&["--help"]);
    let mut cmds: Vec<String> = top
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    cmds.push("completions".into());
    assert!(cmds.len() >= 7, "{top}");
    cmds
}

#[test]
fn each_commands_synopsis_names_exactly_its_options() {
    let synopsis = section("SYNOPSIS");
    let blocks: Vec<&str> = synopsis.split("\n.br\n").collect();
    let cmds = commands();
    assert_eq!(blocks.len(), cmds.len(), "one synopsis line per command: {cmds:?}\n{synopsis}");
    for cmd in &cmds {
        let block = blocks
            .iter()
            .find(|b| b.lines().any(|l| l == format!(".B {cmd}") || l == format!(".B auto-usb-attach {cmd}")))
            .unwrap_or_else(|| panic!("the SYNOPSIS has no line for `{cmd}`"));
        let mut want = help_options(&help(&[cmd, "--help"]), "Options:");
        want.remove("help");
        want.remove("h");
        assert_eq!(roff_options(block), want, "`{cmd}`: the man SYNOPSIS (left) vs `{cmd} --help` (right)\n{block}");
    }
}

#[test]
fn commands_describes_every_command_and_its_options() {
    let text = format!("\n{}", section("COMMANDS"));
    // Each entry's tag line: `.TP` then `.B udev` or `.B attach \fIDEVICE\fP ...`.
    let entries: Vec<&str> = text.split("\n.TP\n").skip(1).collect();
    let tag = |e: &&str| e.lines().next().unwrap_or("").split_whitespace().nth(1).map(str::to_string);
    let described: BTreeSet<String> = entries.iter().filter_map(tag).collect();
    let cmds: BTreeSet<String> = commands().into_iter().collect();
    assert_eq!(described, cmds, "the man COMMANDS entries (left) vs the CLI's commands (right)");
    for cmd in &cmds {
        let entry = entries.iter().find(|e| tag(e).as_deref() == Some(cmd.as_str())).unwrap();
        let mut want = help_options(&help(&[cmd, "--help"]), "Options:");
        want.remove("help");
        want.remove("h");
        // An entry may refer to options described in another (`detach` to `attach`'s DEVICE forms).
        let have = roff_options(entry);
        let missing: Vec<_> = want.difference(&have).collect();
        assert!(missing.is_empty(), "man COMMANDS does not describe `{cmd}` option(s) {missing:?}");
    }
}

#[test]
fn options_describes_exactly_the_global_options() {
    let top = help(&["--help"]);
    let mut global = help_options(&top, "Global options:");
    global.extend(help_options(&top, "Options:"));
    global.insert("root".into()); // hidden from --help (tests and the demo), documented
    let text = section("OPTIONS");
    let described: BTreeSet<String> =
        text.split("\n.TP\n").skip(1).flat_map(|entry| roff_options(entry.lines().next().unwrap_or(""))).collect();
    assert_eq!(described, global, "the man OPTIONS entries (left) vs --help's global options (right)\n{text}");
}

#[test]
fn the_option_readers_see_long_and_short_options() {
    assert_eq!(
        options_in("  -v, --verbose...  More logging (-v debug, -vv trace)"),
        ["v", "verbose"].map(String::from).into()
    );
    assert_eq!(roff_options(".BR \\-V \", \" \\-\\-version"), ["V", "version"].map(String::from).into());
    assert_eq!(roff_options(".RB [ \\-\\-dry\\-run ] xenusb-3-7"), ["dry-run"].map(String::from).into());
    assert_eq!(roff_options("\\fR[\\fP\\-\\-vm \\fINAME\\fP"), ["vm"].map(String::from).into());
}
