//! `check`'s report as data: each finding is an item with a kind, so the
//! command prints it as text or as JSON from one source, and nothing else
//! (log lines go to the log sinks, never into the report on stdout).

use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    /// Looked at, fine.
    Ok,
    /// Worth knowing; not wrong.
    Warning,
    /// Wrong: `check` exits 1.
    Problem,
    /// Could not be looked at (not root): neither fine nor wrong.
    NotChecked,
    /// Not there yet, and nothing is wrong: a rule's device is not plugged
    /// in, a VM is down. "Why isn't my device in the VM?" answered.
    Waiting,
    /// A present device a rule routes that the host keeps back, with the
    /// reason (deny, the mount guard, `authorized` = 0). Not a problem.
    Held,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Item {
    pub(crate) kind: Kind,
    /// What it is about: "config", "udev rule", "VM win10", ...
    pub(crate) subject: String,
    pub(crate) text: String,
    /// For a finding that is an error: its kind (timeout, refused, ...).
    #[serde(rename = "error-kind", skip_serializing_if = "Option::is_none")]
    pub(crate) error_kind: Option<crate::error::ErrorKind>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) items: Vec<Item>,
}

impl Report {
    pub(crate) fn push(&mut self, kind: Kind, subject: impl Into<String>, text: impl Into<String>) {
        self.items.push(Item { kind, subject: subject.into(), text: text.into(), error_kind: None });
    }

    /// A problem that is error `e`: its whole chain, and its kind.
    pub(crate) fn push_error(&mut self, subject: impl Into<String>, e: &crate::error::Error) {
        let text = format!("{e:#}");
        self.items.push(Item { kind: Kind::Problem, subject: subject.into(), text, error_kind: Some(e.kind()) });
    }

    pub(crate) fn count(&self, kind: Kind) -> usize {
        self.items.iter().filter(|i| i.kind == kind).count()
    }

    /// The last line: ok, or how many problems, what waits or is held
    /// back, and what was not checked.
    pub(crate) fn summary(&self) -> String {
        let (p, w, n) = (self.count(Kind::Problem), self.count(Kind::Warning), self.count(Kind::NotChecked));
        let mut s = if p == 0 { "ok".to_string() } else { format!("{p} problem(s)") };
        if w > 0 {
            s.push_str(&format!(", {w} warning(s)"));
        }
        for (k, what) in [(Kind::Waiting, "waiting"), (Kind::Held, "held back")] {
            if self.count(k) > 0 {
                s.push_str(&format!(", {} {what}", self.count(k)));
            }
        }
        if n > 0 {
            s.push_str(&format!(", {n} item(s) not checked (run as root to check them)"));
        }
        s
    }

    /// One line per item, then the summary.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        for i in &self.items {
            let tag = match i.kind {
                Kind::Ok => "",
                Kind::Warning => "warning: ",
                Kind::Problem => "problem: ",
                Kind::NotChecked => "not checked: ",
                Kind::Waiting => "waiting: ",
                Kind::Held => "held back: ",
            };
            out.push_str(&format!("{tag}{}: {}\n", i.subject, i.text));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "items": self.items,
            "problems": self.count(Kind::Problem),
            "warnings": self.count(Kind::Warning),
            "not-checked": self.count(Kind::NotChecked),
            "waiting": self.count(Kind::Waiting),
            "held": self.count(Kind::Held),
            "ok": self.count(Kind::Problem) == 0,
            "summary": self.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_say_the_same() {
        let mut r = Report::default();
        r.push(Kind::Ok, "config", "/etc/x.toml: 1 VM(s)");
        assert_eq!(r.text(), "config: /etc/x.toml: 1 VM(s)\nok\n");
        r.push(Kind::NotChecked, "VMs", "needs root");
        r.push(Kind::Problem, "udev rule", "not installed");
        let t = r.text();
        assert!(t.contains("not checked: VMs: needs root\nproblem: udev rule: not installed\n"), "{t}");
        assert!(t.ends_with("1 problem(s), 1 item(s) not checked (run as root to check them)\n"), "{t}");
        let j = r.json();
        assert_eq!(
            (j["problems"].as_u64(), j["not-checked"].as_u64(), j["ok"].as_bool()),
            (Some(1), Some(1), Some(false))
        );
        assert_eq!(j["items"][1]["kind"], "not-checked");
        assert_eq!(j["items"][2]["subject"], "udev rule");
        assert!(j["items"][2].get("error-kind").is_none());
        r.push_error("VM a", &crate::error::Error::of(crate::error::ErrorKind::Timeout, "no answer"));
        assert_eq!(r.json()["items"][3]["error-kind"], "timeout");
    }

    #[test]
    fn waiting_and_held_back_are_said_and_are_no_problem() {
        let mut r = Report::default();
        r.push(Kind::Waiting, "VM a", "hubs 1-4: waiting for device");
        r.push(Kind::Held, "VM a", "3-1 (0781:5583): denied by class:08");
        assert_eq!(
            r.text(),
            "waiting: VM a: hubs 1-4: waiting for device\nheld back: VM a: 3-1 (0781:5583): denied by class:08\n\
             ok, 1 waiting, 1 held back\n"
        );
        let j = r.json();
        assert_eq!((j["waiting"].as_u64(), j["held"].as_u64(), j["ok"].as_bool()), (Some(1), Some(1), Some(true)));
        assert_eq!((j["items"][0]["kind"].as_str(), j["items"][1]["kind"].as_str()), (Some("waiting"), Some("held")));
    }
}
