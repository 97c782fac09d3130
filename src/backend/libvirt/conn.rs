//! The libvirt helper's side (cargo feature `libvirt`, binary
//! `auto-usb-attach-libvirt`): libvirtd through its C library (`virt`
//! crate, libvirt's own binding). It serves the requests of `helper.rs`, one
//! JSON line each way on stdin/stdout, for one domain. Only this program
//! links libvirt: the main binary, run for every USB event, loads none of it.

use super::proto::{Reply, Request};
use super::LvError;
use std::io::{BufRead, Write};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

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

/// Connect and find running domain `name`: its identity (uuid and run id),
/// or why it is not running.
fn find(uri: &str, name: &str) -> Result<Result<(String, Domain, Connect), String>, LvError> {
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

/// Serve requests from `input` until it closes: first `open`, then any
/// number of `xml`, `attach`, `detach` on that domain.
pub fn serve(input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
    // Otherwise libvirt prints every error to stderr as well.
    virt::error::clear_error_callback();
    let mut dom: Option<(Domain, Connect)> = None;
    for line in input.lines() {
        let reply = match serde_json::from_str::<Request>(&line?) {
            Err(e) => Reply::Error(LvError::Refused(format!("helper: bad request: {e}"))),
            Ok(Request::Open { uri, domain }) => match find(&uri, &domain) {
                Ok(Ok((instance, d, c))) => {
                    dom = Some((d, c));
                    Reply::Ok(instance)
                }
                Ok(Err(why)) => Reply::NotRunning(why),
                Err(e) => Reply::Error(e),
            },
            Ok(req) => match &dom {
                None => Reply::Error(LvError::Refused("helper: no domain open".into())),
                Some((d, _)) => {
                    let live = sys::VIR_DOMAIN_AFFECT_LIVE;
                    let r = match req {
                        Request::Xml => d.xml_desc(0),
                        Request::Attach { xml } => d.attach_device_flags(&xml, live).map(|_| String::new()),
                        Request::Detach { xml } => d.detach_device_flags(&xml, live).map(|_| String::new()),
                        Request::Open { .. } => unreachable!("handled above"),
                    };
                    match r {
                        Ok(v) => Reply::Ok(v),
                        Err(e) => Reply::Error(classify(e)),
                    }
                }
            },
        };
        serde_json::to_writer(&mut output, &reply)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}
