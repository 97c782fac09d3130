//! The tool's side of the libvirt helper: a `DomainLink` that runs
//! `auto-usb-attach-libvirt` (installed beside the tool) for the length of
//! one session and waits for each reply at most what is left of the
//! invocation's budget. The helper, not the tool, links libvirt's library:
//! an event for a Xen or QEMU VM costs no libvirt start-up.

use super::proto::{Reply, Request};
use super::{Domain, DomainLink, LvError};
use crate::deadline::Deadline;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};

/// The helper's file name, looked for beside the running binary.
pub const HELPER: &str = "auto-usb-attach-libvirt";

struct Helper {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<std::io::Result<String>>,
    deadline: Deadline,
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Done, or past the budget: either way it goes with us.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Helper {
    fn call(&mut self, req: &Request) -> Result<Reply, LvError> {
        let gone = |e: std::io::Error| LvError::Unreachable(format!("the libvirt helper: {e}"));
        let mut line = serde_json::to_string(req).expect("serialises");
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).map_err(gone)?;
        self.stdin.flush().map_err(gone)?;
        let left = self.deadline.remaining("").map_err(|_| LvError::Timeout)?;
        let text = match self.replies.recv_timeout(left) {
            Ok(r) => r.map_err(gone)?,
            Err(RecvTimeoutError::Timeout) => return Err(LvError::Timeout),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(LvError::Unreachable("the libvirt helper exited without answering".into()))
            }
        };
        serde_json::from_str(&text).map_err(|e| LvError::Refused(format!("the libvirt helper answered {text:?}: {e}")))
    }

    fn done(&mut self, req: &Request) -> Result<String, LvError> {
        match self.call(req)? {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e),
            Reply::NotRunning(why) => Err(LvError::Refused(why)),
        }
    }
}

impl DomainLink for Helper {
    fn live_xml(&mut self) -> Result<String, LvError> {
        self.done(&Request::Xml)
    }
    fn attach(&mut self, xml: &str) -> Result<(), LvError> {
        self.done(&Request::Attach { xml: xml.into() }).map(drop)
    }
    fn detach(&mut self, xml: &str) -> Result<(), LvError> {
        self.done(&Request::Detach { xml: xml.into() }).map(drop)
    }
}

fn helper_path() -> Result<PathBuf, LvError> {
    let exe = std::env::current_exe().map_err(|e| LvError::Unreachable(format!("finding the tool's own path: {e}")))?;
    Ok(exe.with_file_name(HELPER))
}

pub(super) fn open(uri: &str, name: &str, deadline: &Deadline) -> Result<Result<Domain, String>, LvError> {
    let path = helper_path()?;
    let mut child = Command::new(&path)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            LvError::Unreachable(format!(
                "cannot run {} ({e}): it is built and installed with the libvirt feature (make FEATURES=libvirt)",
                path.display()
            ))
        })?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (tx, replies) = channel();
    // A reader thread, so that every wait for a reply is bounded by the budget.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut h = Helper { child, stdin, replies, deadline: *deadline };
    match h.call(&Request::Open { uri: uri.into(), domain: name.into() })? {
        Reply::Ok(instance) => Ok(Ok(Domain { link: Box::new(h), instance })),
        Reply::NotRunning(why) => Ok(Err(why)),
        Reply::Error(e) => Err(e),
    }
}
