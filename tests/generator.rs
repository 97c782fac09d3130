//! The systemd generator (`auto-usb-attach-generator`, a link to the binary)
//! against fixture directories, zram-generator style: each
//! `tests/cases/generator/<case>/` holds the config the generator finds (none
//! for `no-config`) and either `expected/`, the tree it must leave in its
//! output directory (with `expected-stderr`, its warnings, if any), or
//! `expected-error`, its one stderr line (exit 1, nothing written). Set `GENERATOR_BLESS=1` to write the trees it makes as expected.

mod common;

use common::{TestRoot, BIN};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every file under `dir`, by path relative to it, with its text and mode.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.map(Result::unwrap) {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                let text = std::fs::read_to_string(e.path()).unwrap();
                out.insert(e.path().strip_prefix(dir).unwrap().to_path_buf(), (text, m.permissions().mode() & 0o7777));
            }
        }
    }
    out
}

#[test]
fn generator_cases() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/generator");
    let mut names: Vec<_> = std::fs::read_dir(&cases).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert!(names.len() >= 5, "the cases are missing");
    let work = TestRoot::new("generator");
    // systemd runs it by this name, with its three output directories.
    let gen = work.path.as_path().join("auto-usb-attach-generator");
    std::os::unix::fs::symlink(BIN, &gen).unwrap();
    let mut failed = Vec::new();
    for name in names {
        let case = cases.join(&name);
        let root = work.path.as_path().join(&name).join("root");
        let out = work.path.as_path().join(&name).join("out");
        for d in [root.join("etc"), out.join("normal"), out.join("early"), out.join("late")] {
            std::fs::create_dir_all(d).unwrap();
        }
        if case.join("auto-usb-attach.toml").exists() {
            std::fs::copy(case.join("auto-usb-attach.toml"), root.join("etc/auto-usb-attach.toml")).unwrap();
        }
        let run = Command::new(&gen)
            .args([out.join("normal"), out.join("early"), out.join("late")])
            .env("AUTO_USB_ATTACH_ROOT", &root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        let got = tree(&out);
        let name = name.to_string_lossy();
        if let Ok(want) = std::fs::read_to_string(case.join("expected-error")) {
            if run.status.code() != Some(1) || stderr.trim_end() != want.trim_end() || !got.is_empty() {
                failed.push(format!("{name}: exit {:?}, stderr {stderr:?}, wrote {:?}", run.status.code(), got.keys()));
            }
            continue;
        }
        let want_stderr = std::fs::read_to_string(case.join("expected-stderr")).unwrap_or_default();
        if !run.status.success() || stderr.trim_end() != want_stderr.trim_end() {
            failed.push(format!("{name}: exit {:?}, stderr {stderr:?}", run.status.code()));
            continue;
        }
        let expected = case.join("expected");
        if std::env::var_os("GENERATOR_BLESS").is_some() {
            for (p, (text, _)) in &got {
                let to = expected.join(p.strip_prefix("normal").unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::write(to, text).unwrap();
            }
        }
        let want: BTreeMap<PathBuf, (String, u32)> =
            tree(&expected).into_iter().map(|(p, (text, _))| (Path::new("normal").join(p), (text, 0o644))).collect();
        if got != want {
            failed.push(format!("{name}: wrote {got:#?}\nexpected {want:#?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
