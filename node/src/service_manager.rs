//! Telling the service manager (systemd, `Type=notify`) what the node is doing: `READY=1` once
//! both listeners serve, so `systemctl start` returns only then (and fails if the node cannot
//! start, say with a malformed agreement); `STOPPING=1` at SIGTERM; and, when the unit sets
//! `WatchdogSec=`, a `WATCHDOG=1` at half that interval from the node's runtime, so that a node
//! whose runtime hangs is restarted. Without `NOTIFY_SOCKET` in the environment (run by hand,
//! `Type=simple`) all of this does nothing.

use sd_notify::NotifyState;

/// The watchdog task; dropping it stops the pings.
#[derive(Debug)]
pub struct Watchdog(Option<tokio::task::JoinHandle<()>>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Reports readiness with `status` (one line, shown by `systemctl status`) and starts the
/// watchdog pings if the unit asks for them. Must run inside a tokio runtime.
pub fn ready(status: &str) -> Watchdog {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    let Some(interval) = sd_notify::watchdog_enabled().filter(|d| !d.is_zero()) else {
        return Watchdog(None);
    };
    Watchdog(Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    })))
}

/// Reports that the node is stopping (draining calls and deliveries).
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining calls and deliveries"),
    ]);
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify the service manager (NOTIFY_SOCKET)");
    }
}
