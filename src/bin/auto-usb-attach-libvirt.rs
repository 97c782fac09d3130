//! auto-usb-attach-libvirt: the libvirt helper. `auto-usb-attach` runs it for
//! a libvirt domain's session and speaks one JSON line each way on its stdin
//! and stdout (`libvirt::serve`); it is the only program of the project that
//! links libvirt's library. Not meant to be run by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    match auto_usb_attach::backend::libvirt_serve(stdin, stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auto-usb-attach-libvirt: {e}");
            ExitCode::from(1)
        }
    }
}
