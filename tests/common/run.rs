//! Running the built binary, with a hard safety kill so a hanging tool
//! fails the test instead of hanging the suite.

use super::*;

#[derive(Debug)]
pub struct Run {
    pub args: String,
    /// The temp root; replaced by `<root>` before matching error text, so a test's
    /// own directory name can never satisfy an assertion.
    pub root: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

pub(crate) fn run_cmd(mut c: Command, root: &str) -> Run {
    let args = format!("{:?}", c);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > HARD_KILL {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args} still running after {HARD_KILL:?}: killed (the tool hangs)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    let r = Run { args, root: root.to_string(), code: status.code(), stdout, stderr, elapsed };
    // AUA_TEST_SHOW=1 cargo test -- --nocapture: see every run's output.
    if std::env::var_os("AUA_TEST_SHOW").is_some() {
        eprintln!("{}\n({:?})\n", r.dump(), r.elapsed);
    }
    r
}

impl Run {
    pub fn dump(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }

    /// Asserts the exit code and that nothing panicked.
    pub fn code(&self, want: i32) -> &Run {
        self.no_panic();
        assert_eq!(self.code, Some(want), "wrong exit code\n{}", self.dump());
        self
    }

    pub fn no_panic(&self) -> &Run {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "the tool panicked\n{}",
            self.dump()
        );
        self
    }

    /// Exit 0, and no `error:` line.
    pub fn ok(&self) -> &Run {
        self.code(0);
        assert!(self.error_lines().is_empty(), "exit 0 but an error line was printed\n{}", self.dump());
        self
    }

    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("error:")).collect()
    }

    /// Asserts exit `code` and exactly one `error: ` line on stderr that contains every
    /// string of `want` (case-sensitive, with the temp root path replaced by `<root>`);
    /// returns that line (root replaced).
    pub fn fails(&self, code: i32, want: &[&str]) -> String {
        self.code(code);
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "want exactly one 'error: ' line on stderr\n{}", self.dump());
        assert!(lines[0].starts_with("error: "), "error line must start with 'error: '\n{}", self.dump());
        let line = lines[0].replace(&self.root, "<root>");
        for w in want {
            assert!(line.contains(w), "error line lacks {w:?}: {line:?}\n{}", self.dump());
        }
        line
    }

    /// Like `fails` but any of `alternatives` may appear.
    pub fn error_contains_any(&self, alternatives: &[&str]) -> String {
        let line = self.fails(1, &[]);
        assert!(
            alternatives.iter().any(|a| line.contains(a)),
            "error line contains none of {alternatives:?}: {line:?}\n{}",
            self.dump()
        );
        line
    }

    pub fn stdout_json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.dump()))
    }
}
