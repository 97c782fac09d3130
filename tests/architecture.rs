//! The layer rule of docs/ARCHITECTURE.md, checked against the source: every
//! `crate::<module>` a file names (in `use` lines or paths) is looked up in
//! the table below. This test, not a comment, is the rule: importing across
//! a layer fails here, naming the file, the module and the rule.

use std::path::{Path, PathBuf};

/// The backend layer, as the units below name it: its interface
/// (`backend/mod.rs`), the wire clients and each backend's folder.
const BACKENDS: &[&str] = &["backend", "backend/wire", "backend/qemu", "backend/xen", "backend/libvirt"];
/// Modules that act (state under the lock, sessions, commands).
const ACTING: &[&str] = &["ctx", "apply", "cmd", "lock", "session", "hook"];

/// (units, what they must not use, why). A unit is a top-level module, or
/// one of `BACKENDS`. The compiler already keeps the wire clients and the
/// backends' folders private to `backend`; this keeps the rest of the map.
fn rules() -> Vec<(Vec<&'static str>, Vec<&'static str>, &'static str)> {
    let cat = |parts: &[&[&'static str]]| parts.iter().flat_map(|p| p.iter().copied()).collect::<Vec<_>>();
    vec![
        (vec!["cmd"], BACKENDS.to_vec(), "commands reach a VM only through ctx and session"),
        (
            vec!["plan", "events", "sync", "step", "controller", "selector", "types", "report", "outcome"],
            cat(&[BACKENDS, ACTING, &["fsio", "log", "root"]]),
            "planners and values decide in pure code: no I/O, no VM",
        ),
        (vec!["config"], cat(&[BACKENDS, ACTING, &["host"]]), "config parsing imports no host I/O and no VM"),
        (vec!["state"], cat(&[BACKENDS, ACTING]), "state is data: it reaches no VM"),
        (
            vec!["backend/wire"],
            cat(&[&BACKENDS[..1], &BACKENDS[2..], ACTING, &["plan", "events", "sync", "state", "config"]]),
            "wire clients know nothing above them",
        ),
        (vec!["backend/qemu"], vec!["backend/xen", "backend/libvirt"], "plain QEMU knows no other backend"),
        (vec!["backend/xen"], vec!["backend/libvirt"], "Xen builds on QEMU's QMP link only"),
        (
            vec!["backend/libvirt"],
            vec!["backend/qemu", "backend/xen", "backend/wire"],
            "libvirt is reached through libvirtd only",
        ),
        (
            vec!["backend", "backend/qemu", "backend/xen", "backend/libvirt"],
            ACTING.to_vec(),
            "backends are called by the session; they call nothing above them",
        ),
        (
            vec!["apply", "ctx", "session"],
            BACKENDS[1..].to_vec(),
            "above the backend layer only its interface (backend/mod.rs) is used",
        ),
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

/// A file's module path: `src/backend/xen/records.rs` -> [backend, xen, records];
/// `src/backend/xen/mod.rs` -> [backend, xen]; `src/plan.rs` -> [plan].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut p: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
    if p.last().is_some_and(|l| l == "mod") {
        p.pop();
    }
    p
}

/// The unit a module path belongs to: a top-level module, or
/// `backend/<child>` for what lives in the backend layer's folders.
fn unit(path: &[String]) -> String {
    match path {
        [b, child, ..] if b == "backend" && BACKENDS.contains(&format!("backend/{child}").as_str()) => {
            format!("backend/{child}")
        }
        [first, ..] => first.clone(),
        [] => String::new(),
    }
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// Every unit `text` (the file at module path `me`) names: `crate::a::b`
/// (also `use crate::{a, b::c}`) and `super::x` paths, resolved.
fn uses(me: &[String], text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (prefix, base) in [("crate::", Vec::new()), ("super::", me[..me.len().saturating_sub(1)].to_vec())] {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                // `super::super::` counts once per `super`: only the first is resolved here.
                let before = &rest[..i];
                rest = &rest[i + prefix.len()..];
                if prefix == "super::" && before.ends_with("super::") {
                    continue;
                }
                let mut heads: Vec<String> = Vec::new();
                if let Some(group) = rest.strip_prefix('{') {
                    for item in group.split('}').next().unwrap_or("").split(',') {
                        heads.push(item.trim().to_string());
                    }
                } else {
                    heads.push(rest.to_string());
                }
                for h in heads {
                    let mut path = base.clone();
                    let mut h = h.as_str();
                    while let Some(r) = h.strip_prefix("super::") {
                        path.pop();
                        h = r;
                    }
                    let first = ident(h);
                    if first.is_empty() || first == "self" {
                        continue;
                    }
                    path.push(first.clone());
                    if let Some(r) = h[first.len()..].strip_prefix("::") {
                        let second = ident(r);
                        if !second.is_empty() {
                            path.push(second);
                        }
                    }
                    out.push((n + 1, unit(&path)));
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
        let me = module_path(src, f);
        let module = unit(&me);
        let text = std::fs::read_to_string(f).unwrap();
        for (line, used) in uses(&me, &text) {
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
    // A command reaching into a backend, in both spellings; a planner using
    // the session; a backend reaching into another: each is caught.
    let dir = std::env::temp_dir().join(format!("aua-arch-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("cmd")).unwrap();
    std::fs::create_dir_all(dir.join("backend/xen")).unwrap();
    std::fs::write(
        dir.join("cmd/x.rs"),
        "use crate::{ctx, backend::xen::LibxlRecords};\nfn f() { crate::backend::wire::qmp::connect(); }\n",
    )
    .unwrap();
    std::fs::write(dir.join("plan.rs"), "use crate::session::Session; // and a comment: crate::backend::wire\n")
        .unwrap();
    std::fs::write(dir.join("backend/qemu.rs"), "use super::xen::XenVm;\nuse super::{Link, Op};\n").unwrap();
    std::fs::write(dir.join("backend/xen/mod.rs"), "use super::qemu::Qemu;\nuse super::super::libvirt::X;\n").unwrap();
    let bad = violations(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(bad[0].starts_with("backend/qemu.rs:1: backend/qemu uses backend/xen"), "{bad:#?}");
    assert!(bad[1].starts_with("backend/xen/mod.rs:2: backend/xen uses backend/libvirt"), "{bad:#?}");
    assert!(bad[2].starts_with("cmd/x.rs:1: cmd uses backend/xen"), "{bad:#?}");
    assert!(bad[3].starts_with("cmd/x.rs:2: cmd uses backend/wire"), "{bad:#?}");
    assert!(bad[4].starts_with("plan.rs:1: plan uses session"), "{bad:#?}");
}

#[test]
fn only_the_tests_use_the_raw_qmp_client() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let users: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with("backend/mod.rs"))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("testing::"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(users.is_empty(), "backend::testing is for tests/ only: {users:?}");
}
