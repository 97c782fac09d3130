//! The layer rule of docs/ARCHITECTURE.md, checked against the source: every
//! `crate::<module>` a file names (in `use` lines or paths) is looked up in
//! the table below. This test, not a comment, is the rule: importing across
//! a layer fails here, naming the file, the module and the rule.

use std::path::{Path, PathBuf};

/// Wire clients: only the backend layer talks to QEMU, xenstored, libxl's
/// locks and libvirtd.
const WIRE: &[&str] = &["qmp", "xenstore", "xenlock", "libvirt"];
/// The backend layer: what reaches a VM.
const BACKEND: &[&str] = &["vm", "session", "backend", "xen"];
/// Modules that act (state under the lock, sessions, commands).
const ACTING: &[&str] = &["ctx", "apply", "cmd", "lock"];

/// (files, what they must not use, why).
fn rules() -> Vec<(Vec<&'static str>, Vec<&'static str>, &'static str)> {
    let cat = |parts: &[&[&'static str]]| parts.iter().flat_map(|p| p.iter().copied()).collect::<Vec<_>>();
    vec![
        (vec!["cmd"], cat(&[WIRE, &["vm", "backend", "xen"]]), "commands reach a VM only through ctx and session"),
        (
            vec!["plan", "events", "sync", "step", "controller", "selector", "types", "report"],
            cat(&[WIRE, BACKEND, ACTING, &["fsio", "log", "root"]]),
            "planners and values decide in pure code: no I/O, no wire type",
        ),
        (vec!["config"], cat(&[WIRE, BACKEND, ACTING, &["host"]]), "config parsing imports no host I/O and no VM"),
        (vec!["state"], cat(&[WIRE, BACKEND, ACTING]), "state is data: it reaches no VM"),
        (
            vec!["qmp", "xenstore", "xenlock", "libvirt"],
            cat(&[BACKEND, ACTING, &["plan", "events", "sync"]]),
            "wire clients know nothing above them",
        ),
        (vec!["apply"], WIRE.to_vec(), "apply executes through session, never a wire client"),
        (vec!["ctx"], WIRE.to_vec(), "ctx opens sessions through vm and backend, never a wire client"),
    ]
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/cmd/udev.rs` -> "cmd"; `src/libvirt/conn.rs` -> "libvirt"; `src/plan.rs` -> "plan".
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Every module `text` names as `crate::<m>`, including `use crate::{a, b::c}`.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let m: String =
                        item.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !m.is_empty() {
                        out.push((n + 1, m));
                    }
                }
            } else {
                let m: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !m.is_empty() {
                    out.push((n + 1, m));
                }
            }
        }
    }
    out
}

fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rs_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in &files {
        let module = module_of(src, f);
        let text = std::fs::read_to_string(f).unwrap();
        for (line, used) in uses(&text) {
            if used == module {
                continue;
            }
            for (who, forbidden, why) in rules() {
                if who.contains(&module.as_str()) && forbidden.contains(&used.as_str()) {
                    bad.push(format!("{}:{line}: {module} uses {used}: {why}", f.strip_prefix(src).unwrap().display()));
                }
            }
        }
    }
    bad
}

#[test]
fn no_module_imports_across_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layer rule broken (docs/ARCHITECTURE.md):\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_an_import_across_a_layer() {
    // A command reaching for a wire client, in both spellings, is caught.
    let dir = std::env::temp_dir().join(format!("aua-arch-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("cmd")).unwrap();
    std::fs::write(dir.join("cmd/x.rs"), "use crate::{ctx, qmp::Qmp};\nfn f() { crate::xenstore::connect(); }\n")
        .unwrap();
    std::fs::write(dir.join("plan.rs"), "use crate::session::Session; // and a comment: crate::qmp\n").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad[0].starts_with("cmd/x.rs:1: cmd uses qmp"), "{bad:#?}");
    assert!(bad[1].starts_with("cmd/x.rs:2: cmd uses xenstore"), "{bad:#?}");
    assert!(bad[2].starts_with("plan.rs:1: plan uses session"), "{bad:#?}");
}
