//! The wire clients: one conversation each with QEMU's QMP monitor and with
//! xenstored, every connect, read and write bounded by the invocation's
//! deadline. Private to `backend`: only backends reach a VM's owner.

pub mod qmp;
pub mod xenstore;
