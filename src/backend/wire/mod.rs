//! The wire clients: one conversation each with QEMU's QMP monitor and with
//! xenstored, every connect, read and write bounded by the invocation's
//! deadline. Private to `backend`: only backends reach a VM's owner.
//!
//! The plumbing both share lives here, once: a non-blocking UNIX connect
//! retried while the backlog is full, and a stream whose every read and
//! write waits at most until the deadline.

pub mod qmp;
pub mod xenstore;

use crate::deadline::Deadline;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why a UNIX connect failed, for each client to say in its own terms.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Refused, or no such socket: nobody listens (gone, or not started).
    NotListening(String),
    /// The socket's permissions keep us out.
    Denied(String),
    /// The backlog stayed full until the deadline.
    Timeout(String),
    /// Anything else.
    Io(String),
}

/// Non-blocking connect to `path`, retried until the deadline while the
/// backlog is full (EAGAIN at once instead of blocking past our budget).
pub(crate) fn connect_unix(path: &Path, deadline: &Deadline) -> Result<UnixStream, ConnectError> {
    use nix::errno::Errno;
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::{AsRawFd, OwnedFd};
    let shown = path.display();
    let addr = UnixAddr::new(path).map_err(|e| ConnectError::Io(format!("bad socket path {shown}: {e}")))?;
    loop {
        let fd: OwnedFd =
            socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| ConnectError::Io(format!("socket: {e}")))?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let s = UnixStream::from(fd);
                s.set_nonblocking(false).map_err(|e| ConnectError::Io(format!("socket: {e}")))?;
                return Ok(s);
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                if deadline.remaining("").is_err() {
                    return Err(ConnectError::Timeout(format!("timed out connecting to {shown} (backlog full)")));
                }
                std::thread::sleep(crate::timing::poll());
            }
            Err(e @ (Errno::ECONNREFUSED | Errno::ENOENT)) => {
                return Err(ConnectError::NotListening(format!("cannot connect to {shown}: {}", e.desc())))
            }
            Err(e @ (Errno::EACCES | Errno::EPERM)) => {
                return Err(ConnectError::Denied(format!("cannot connect to {shown}: {}", e.desc())))
            }
            Err(e) => return Err(ConnectError::Io(format!("cannot connect to {shown}: {}", e.desc()))),
        }
    }
}

enum Transport {
    Socket(UnixStream),
    /// A device node (xenstore's /dev/xen/xenbus): takes a whole request at
    /// once and never blocks a writer (nor reports POLLOUT).
    Device(File),
}

/// A connection whose every read and write waits at most until the deadline,
/// or `cap` if that comes first (poll(2) on the descriptor: the socket and a
/// device node alike).
pub struct DeadlineStream {
    t: Transport,
    deadline: Deadline,
    cap: Duration,
    /// What we wait on, for the timeout's words ("on QMP").
    what: &'static str,
}

impl DeadlineStream {
    pub(crate) fn socket(s: UnixStream, deadline: &Deadline, what: &'static str) -> Self {
        DeadlineStream { t: Transport::Socket(s), deadline: *deadline, cap: Duration::MAX, what }
    }

    pub(crate) fn device(f: File, deadline: &Deadline, what: &'static str) -> Self {
        DeadlineStream { t: Transport::Device(f), deadline: *deadline, cap: Duration::MAX, what }
    }

    /// Each wait at most `cap` (e.g. for a greeting), within the deadline.
    pub(crate) fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.t {
            Transport::Socket(s) => s.as_fd(),
            Transport::Device(f) => f.as_fd(),
        }
    }

    fn left(&self) -> std::io::Result<Duration> {
        self.deadline
            .capped(self.what, self.cap)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()))
    }

    fn wait_readable(&self) -> std::io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let until = std::time::Instant::now() + self.left()?;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("timed out {}", self.what)));
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => continue, // the check above ends this
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(std::io::Error::from(e)),
            }
        }
    }
}

impl DeadlineStream {
    /// All of `buf`, with `fd` passed alongside its first byte (SCM_RIGHTS:
    /// the peer gets its own descriptor of the same open file), within the
    /// deadline. Only a socket can carry one.
    pub(crate) fn send_with_fd(&mut self, buf: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let left = self.left()?;
        let Transport::Socket(s) = &mut self.t else {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "a device node cannot pass descriptors"));
        };
        s.set_write_timeout(Some(left))?;
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let n = loop {
            match sendmsg::<()>(s.as_raw_fd(), &[std::io::IoSlice::new(buf)], &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map_err(std::io::Error::from)?,
            }
        };
        s.write_all(&buf[n..])
    }

    /// The pid of the process at the other end of a socket (SO_PEERCRED:
    /// the one that created the listening socket), if the kernel says.
    pub(crate) fn peer_pid(&self) -> Option<i32> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let Transport::Socket(s) = &self.t else { return None };
        getsockopt(s, PeerCredentials).ok().map(|c| c.pid()).filter(|&p| p > 0)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.wait_readable()?;
        match &mut self.t {
            Transport::Socket(s) => s.read(buf),
            Transport::Device(f) => f.read(buf),
        }
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        match &mut self.t {
            Transport::Socket(s) => {
                s.set_write_timeout(Some(left))?;
                s.write(buf)
            }
            Transport::Device(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
