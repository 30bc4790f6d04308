//! Signals: SIGTERM and SIGINT ask the process to stop; SIGHUP asks it to reload where the
//! process has something to reload (the node agent), and otherwise keeps its default action.
//!
//! The handlers are installed when [`Signals`] is built, not when it is first awaited: from then
//! on none of these signals can end the process with its default action, which would leave
//! routes announced and addresses bound (the agent) or the leader Lease held until it expires
//! (the operator). A handler that cannot be installed is an error at start, not a degraded mode
//! found out at the first SIGTERM.
//!
//! Unix only: both binaries are built, tested and shipped for Linux alone.

#[cfg(not(unix))]
compile_error!("sharedip-process's signal handling supports Unix only");

use futures::Stream;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM or SIGINT: finish cleanly (withdraw, CEASE, unbind; release the Lease), exit.
    Stop,
    /// SIGHUP (`systemctl reload`, `kill -HUP`): re-read what can change and apply the
    /// difference; never exit.
    Reload,
}

/// What SIGHUP does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    /// Delivered as [`Control::Reload`].
    Reload,
    /// Not handled: it ends the process, as it does a Kubernetes controller (controller-runtime
    /// handles SIGTERM and SIGINT only), for a process with nothing to reload.
    Default,
}

/// A signal handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot handle {name}: {source}")]
pub struct SignalError {
    /// The signal, e.g. `SIGTERM`.
    pub name: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// The process's signal handlers.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Option<Signal>,
}

impl Signals {
    /// Installs the handlers of SIGTERM and SIGINT, and of SIGHUP as `hangup` says.
    pub fn install(hangup: Hangup) -> Result<Self, SignalError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SignalError { name, source })
        };
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: match hangup {
                Hangup::Reload => Some(install(SignalKind::hangup(), "SIGHUP")?),
                Hangup::Default => None,
            },
        })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Control {
        let Self { term, int, hup } = self;
        // Without a SIGHUP handler this branch ends at once with None, which disables it.
        let hup = async {
            match hup {
                Some(h) => h.recv().await,
                None => None,
            }
        };
        tokio::select! {
            Some(()) = term.recv() => Control::Stop,
            Some(()) = int.recv() => Control::Stop,
            Some(()) = hup => Control::Reload,
            // The runtime is going away: nothing will be delivered any more.
            else => Control::Stop,
        }
    }

    /// The signals as a stream, for loops that `select!` over several sources.
    pub fn into_stream(self) -> impl Stream<Item = Control> + Send + Unpin {
        Box::pin(futures::stream::unfold(self, |mut s| async move {
            let c = s.recv().await;
            Some((c, s))
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    /// Sends `sig` to this process, as `kill` or the kubelet would.
    fn send(sig: libc::c_int) {
        // SAFETY: kill(2) on our own pid; the handlers were installed before.
        let rc = unsafe { libc::kill(libc::getpid(), sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    async fn next(s: &mut (impl Stream<Item = Control> + Unpin)) -> Option<Control> {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("the signal arrives")
    }

    // One test sends every signal: the handlers are process-wide, and a SIGTERM of a parallel
    // test would be read by whichever test awaits first.
    #[tokio::test]
    async fn stream_delivers_reload_then_stop_and_interrupt_stops() {
        let signals = Signals::install(Hangup::Reload).unwrap();
        let mut stream = signals.into_stream();
        send(libc::SIGHUP);
        assert_eq!(next(&mut stream).await, Some(Control::Reload));
        send(libc::SIGTERM);
        assert_eq!(next(&mut stream).await, Some(Control::Stop));
        send(libc::SIGINT);
        assert_eq!(next(&mut stream).await, Some(Control::Stop));
        // A process without reload gets only stops; its SIGHUP handler is not installed (a SIGHUP
        // would end the test process, so that half is checked by what install asked for).
        let mut stop_only = Signals::install(Hangup::Default).unwrap();
        assert!(stop_only.hup.is_none());
        send(libc::SIGTERM);
        let got = tokio::time::timeout(Duration::from_secs(10), stop_only.recv()).await;
        assert_eq!(got.unwrap(), Control::Stop);
    }
}
