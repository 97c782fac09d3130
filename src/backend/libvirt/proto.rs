//! The line protocol between the tool and its libvirt helper: one JSON
//! object per line each way, a request and its reply.

use super::LvError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Connect to `uri` and find running domain `domain`.
    Open { uri: String, domain: String },
    /// The live domain XML.
    Xml,
    /// Attach this device XML, live only.
    Attach { xml: String },
    /// Detach this device XML, live only.
    Detach { xml: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// Done: the domain's identity (open), its XML (xml), or "" (attach, detach).
    Ok(String),
    /// open: the domain is not running, or not defined.
    NotRunning(String),
    Error(LvError),
}
