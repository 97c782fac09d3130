//! `TestRoot`: a temp dir used as `--root`, with config and state helpers
//! (state read through the library's real `State`), removed on drop.

use super::*;

pub(crate) static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct TestRoot {
    pub path: PathBuf,
}

impl TestRoot {
    /// Holds the state lock as a busy invocation would, for as long as the guard lives.
    pub fn hold_lock(&self) -> nix::fcntl::Flock<std::fs::File> {
        std::fs::create_dir_all(self.state_dir()).unwrap();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.state_dir().join("lock"))
            .unwrap();
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e).unwrap()
    }

    /// `/tmp/aua-<tag>-<pid>-<n>`: kept short, QMP socket paths must fit in 108 bytes.
    pub fn new(tag: &str) -> TestRoot {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir();
        let base = if base.as_os_str().len() > 40 { PathBuf::from("/tmp") } else { base };
        let path = base.join(format!("aua-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestRoot { path }
    }

    /// An absolute OS path as the tool sees it under `--root`.
    pub fn p(&self, abs: &str) -> PathBuf {
        self.path.join(abs.trim_start_matches('/'))
    }

    pub fn root_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Writes `<root>/etc/auto-usb-attach.toml`.
    pub fn write_config(&self, text: &str) {
        let p = self.p("/etc/auto-usb-attach.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        // The tool refuses a config writable by group/others: don't depend on the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.p("/run/auto-usb-attach")
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    pub fn state_text(&self) -> Option<String> {
        match std::fs::read_to_string(self.state_path()) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("cannot read state: {e}"),
        }
    }

    /// The state file parsed; panics (fails the test) if it exists but is not
    /// valid versioned JSON. `None` when there is no state file.
    pub fn state(&self) -> Option<Value> {
        let t = self.state_text()?;
        let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("state.json is not JSON ({e}):\n{t}"));
        assert_eq!(v["version"], json!(1), "state.json version:\n{t}");
        // The tool must be able to read back what it wrote: its own parser says so.
        auto_usb_attach::state::State::parse_str(&t).unwrap_or_else(|e| panic!("state.json: {e}:\n{t}"));
        Some(v)
    }

    /// The state file as the library's real `State`; `None` when there is none.
    pub fn state_typed(&self) -> Option<auto_usb_attach::state::State> {
        let t = self.state_text()?;
        Some(auto_usb_attach::state::State::parse_str(&t).unwrap_or_else(|e| panic!("state.json: {e}:\n{t}")))
    }

    /// Asserts the state dir holds no half-written or moved-aside state file.
    /// Nothing in the state dir but state.json, the lock, and one
    /// `attached-BBB-DDD` mark for each device state holds (the udev rule's
    /// test), no more and no fewer.
    pub fn assert_state_clean(&self) {
        let Ok(rd) = std::fs::read_dir(self.state_dir()) else { return };
        let mut marks = Vec::new();
        for e in rd {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("attached-") {
                marks.push(name);
                continue;
            }
            assert!(
                name == "state.json" || name == "lock",
                "unexpected file {name:?} in the state dir (temp file left behind or state moved aside?)"
            );
        }
        marks.sort();
        assert_eq!(marks, self.expected_marks(), "the attached-* marks are not what state holds");
    }

    /// The state dir's names that start with `prefix`, sorted.
    pub fn state_names(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    /// `attached-BBB-DDD` for each device in state, sorted.
    pub fn expected_marks(&self) -> Vec<String> {
        let mut want: Vec<String> = self
            .state()
            .map(|s| {
                let vms = s["vms"].as_object().cloned().unwrap_or_default();
                vms.values()
                    .flat_map(|v| v["devices"].as_array().cloned().unwrap_or_default())
                    .map(|d| format!("attached-{:03}-{:03}", d["bus"].as_u64().unwrap(), d["addr"].as_u64().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        want.sort();
        want.dedup();
        want
    }

    pub fn remove_state(&self) {
        let _ = std::fs::remove_file(self.state_path());
    }

    /// Records (vm name, device object) of every device in the state file.
    pub fn state_devices(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if let Some(s) = self.state() {
            if let Some(vms) = s["vms"].as_object() {
                for (name, vm) in vms {
                    for d in vm["devices"].as_array().cloned().unwrap_or_default() {
                        out.push((name.clone(), d));
                    }
                }
            }
        }
        out
    }

    /// Is host device bus:addr recorded in the state file (in any VM)?
    pub fn state_has_device(&self, bus: u64, addr: u64) -> bool {
        let (Ok(bus), Ok(addr)) = (u16::try_from(bus), u16::try_from(addr)) else { return false };
        self.state_typed().is_some_and(|s| s.find(bus, addr).is_some())
    }

    /// Runs `auto-usb-attach --root R ARGS...` with a clean environment
    /// (no AUTO_USB_ATTACH_ROOT, no udev variables leaking in from the outside).
    pub fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new(BIN);
        c.env_clear();
        c.arg("--root").arg(&self.path).args(args);
        run_cmd(c, self.root_str())
    }

    /// Runs the binary as udev's RUN would: empty environment (no PATH) plus `env`,
    /// args `--root R --config /etc/auto-usb-attach.toml udev`.
    pub fn udev(&self, env: &[(String, String)]) -> Run {
        let mut c = Command::new(BIN);
        c.env_clear();
        for (k, v) in env {
            c.env(k, v);
        }
        c.arg("--root").arg(&self.path).args(["--config", "/etc/auto-usb-attach.toml", "udev"]);
        run_cmd(c, self.root_str())
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
