//! systemd readiness notification (`Type=notify`), written against the protocol directly: one
//! datagram to `$NOTIFY_SOCKET`. Without `NOTIFY_SOCKET` (upstart, manual runs) every call is a
//! no-op, so callers never need to know which init system they run under. The socket comes
//! from the settings, once ([`init`]).
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

static SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Where notifications go (`NOTIFY_SOCKET`), set once by the composition root.
pub fn init(socket: Option<String>) {
    let _ = SOCKET.set(socket.filter(|s| !s.is_empty()));
}

/// Send `state` (e.g. `READY=1`) to systemd; returns whether a message was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = SOCKET.get().cloned().flatten() else {
        return false;
    };
    let addr = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(abstract_name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    match sent {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(socket = %path, error = %err, "could not notify systemd");
            false
        }
    }
}

/// The agent container is running.
pub fn ready() {
    notify("READY=1\nSTATUS=agent container running");
}

/// Ask systemd for more start-up time (a large image is loading).
pub fn extend_timeout(by: Duration) {
    notify(&format!(
        "EXTEND_TIMEOUT_USEC={}\nSTATUS=loading the agent image",
        by.as_micros()
    ));
}

/// A free-form status line for `systemctl status`.
pub fn status(text: &str) {
    notify(&format!("STATUS={text}"));
}

/// We are shutting down.
pub fn stopping() {
    notify("STOPPING=1");
}
