//! libvirtd through its C library (`virt` crate). libvirt's calls take no
//! timeout, so each runs on one worker thread that owns the connection and
//! the caller waits at most what is left of the invocation's budget: a hung
//! libvirtd costs the budget, never more (the one-shot process then exits,
//! and the worker with it).

use super::{DomainLink, LvError, Opened};
use crate::deadline::Deadline;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::sys;

enum Req {
    Xml,
    Attach(String),
    Detach(String),
}

type Reply = Result<String, LvError>;

struct Conn {
    tx: Sender<(Req, Sender<Reply>)>,
    deadline: Deadline,
}

fn wait<T>(rx: &Receiver<T>, deadline: &Deadline) -> Result<T, LvError> {
    let left = deadline.remaining("").map_err(|_| LvError::Timeout)?;
    rx.recv_timeout(left).map_err(|e| match e {
        RecvTimeoutError::Timeout => LvError::Timeout,
        RecvTimeoutError::Disconnected => LvError::Unreachable("libvirt's worker thread ended".into()),
    })
}

impl Conn {
    fn call(&mut self, req: Req) -> Reply {
        let (tx, rx) = channel();
        self.tx.send((req, tx)).map_err(|_| LvError::Unreachable("libvirt's worker thread ended".into()))?;
        wait(&rx, &self.deadline)?
    }
}

impl DomainLink for Conn {
    fn live_xml(&mut self) -> Result<String, LvError> {
        self.call(Req::Xml)
    }
    fn attach(&mut self, xml: &str) -> Result<(), LvError> {
        self.call(Req::Attach(xml.into())).map(drop)
    }
    fn detach(&mut self, xml: &str) -> Result<(), LvError> {
        self.call(Req::Detach(xml.into())).map(drop)
    }
}

/// libvirt's error, by what the caller does about it.
fn classify(e: virt::error::Error) -> LvError {
    let msg = e.message().to_string();
    let code = match e.code() {
        virt::enumutil::Enum::Known(c) => Some(c),
        _ => None,
    };
    // libvirt gives "No free USB ports" only as an internal error: its text is all there is.
    match code {
        None => LvError::Refused(msg),
        Some(code) => match code {
            ErrorNumber::NoConnect | ErrorNumber::SystemError => LvError::Unreachable(msg),
            ErrorNumber::DeviceMissing => LvError::DeviceMissing(msg),
            ErrorNumber::ConfigUnsupported if msg.contains("USB bus") => LvError::NoUsbPort(msg),
            ErrorNumber::InternalError if msg.contains("No free USB ports") => LvError::NoUsbPort(msg),
            _ => LvError::Refused(msg),
        },
    }
}

type Found = Result<Result<(String, virt::domain::Domain, Connect), String>, LvError>;

fn find(uri: &str, name: &str) -> Found {
    // Otherwise libvirt prints every error to stderr as well.
    virt::error::clear_error_callback();
    let conn = Connect::open(Some(uri)).map_err(|e| LvError::Unreachable(e.message().to_string()))?;
    let dom = match conn.lookup_domain_by_name(name) {
        Ok(d) => d,
        Err(e) if e.code().is_known_and(|c| c == ErrorNumber::NoDomain) => {
            return Ok(Err(format!("libvirt has no domain {name}")))
        }
        Err(e) => return Err(classify(e)),
    };
    if !dom.is_active().map_err(classify)? {
        return Ok(Err(format!("libvirt domain {name} is not running")));
    }
    let instance = format!("{}:{}", dom.uuid_string().map_err(classify)?, dom.id().unwrap_or(0));
    Ok(Ok((instance, dom, conn)))
}

pub(super) fn open(uri: &str, name: &str, deadline: &Deadline) -> Result<Result<Opened, String>, LvError> {
    let (tx, rx) = channel::<(Req, Sender<Reply>)>();
    let (otx, orx) = channel();
    let (uri, name) = (uri.to_string(), name.to_string());
    std::thread::spawn(move || {
        let (dom, _conn) = match find(&uri, &name) {
            Ok(Ok((instance, dom, conn))) => {
                let _ = otx.send(Ok(Ok(instance)));
                (dom, conn)
            }
            Ok(Err(why)) => return drop(otx.send(Ok(Err(why)))),
            Err(e) => return drop(otx.send(Err(e))),
        };
        for (req, reply) in rx {
            let live = sys::VIR_DOMAIN_AFFECT_LIVE;
            let r = match req {
                Req::Xml => dom.xml_desc(0).map_err(classify),
                Req::Attach(x) => dom.attach_device_flags(&x, live).map(|_| String::new()).map_err(classify),
                Req::Detach(x) => dom.detach_device_flags(&x, live).map(|_| String::new()).map_err(classify),
            };
            let _ = reply.send(r);
        }
    });
    Ok(match wait(&orx, deadline)?? {
        Ok(instance) => Ok(Opened { link: Box::new(Conn { tx, deadline: *deadline }), instance }),
        Err(why) => Err(why),
    })
}
