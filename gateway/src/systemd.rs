//! systemd integration over `$NOTIFY_SOCKET`: `READY=1`, live `STATUS=`,
//! `STOPPING=1`, and a watchdog that is fed only while the pipeline is
//! actually moving. Without a notify socket every call is a no-op, so the
//! same binary runs by hand, in tests and under systemd. Also the signal
//! handlers that start the ordered stop.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Snapshot};
use crate::service::Service;

/// How often `STATUS=` is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The store is open and the drivers run.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining the pipeline"),
    ]);
}

/// The one-line status systemd shows (`systemctl status`) and the demo prints.
pub fn status_line(now: &Snapshot, earlier: &Snapshot) -> String {
    format!(
        "{:.0} readings/s committed, seq {}, queued {}/{}/{}, rejected {}, write errors {}",
        now.commit_rate(earlier),
        now.last_seq,
        now.ingest_queue,
        now.writer_queue,
        now.writer_pending,
        now.rejected,
        now.write_errors,
    )
}

/// Whether the pipeline made progress between two checks `interval` apart.
///
/// Healthy means: the writer proved it is alive within the interval
/// (it does after each commit and every 250 ms while idle), and readings
/// that were waiting at the last check did not stay stuck — if something
/// was in flight at both checks, something must have been committed.
pub fn is_moving(
    metrics: &Metrics,
    now: &Snapshot,
    earlier: &Snapshot,
    interval: Duration,
) -> bool {
    let heartbeat_age = metrics.uptime_ms().saturating_sub(
        metrics
            .writer_heartbeat_ms
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let writer_alive = u128::from(heartbeat_age) < interval.as_millis().max(500);
    let stuck =
        earlier.in_flight() > 0 && now.in_flight() > 0 && now.committed == earlier.committed;
    writer_alive && !stuck
}

/// While a start step that can take long runs (the first start after an
/// update migrates the schema of a database of any size): every `every`
/// (10 s in the gateway) asks systemd for 30 s more start time and feeds
/// the watchdog, so the unit's start timeout does not kill a migration that
/// would then roll back and begin again at every restart. Never ends: drop
/// it when the step is done.
pub async fn keep_starting(what: &str, every: std::time::Duration) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        tracing::info!("{what}: still at it");
        notify(&[
            NotifyState::ExtendTimeoutUsec(30_000_000),
            NotifyState::Watchdog,
            NotifyState::Status(what),
        ]);
    }
}

/// The watchdog as a service: sends `STATUS=` every 2 s and, if systemd
/// enabled the watchdog, `WATCHDOG=1` every half watchdog interval while
/// [`is_moving`].
pub struct Watchdog {
    metrics: Arc<Metrics>,
}

impl Watchdog {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl Service for Watchdog {
    const NAME: &'static str = "watchdog";

    async fn run(self, shutdown: CancellationToken) {
        supervise(self.metrics, shutdown).await;
    }
}

async fn supervise(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map_or(STATUS_INTERVAL, |w| (w / 2).min(STATUS_INTERVAL));
    let mut earlier = metrics.snapshot();
    let mut last_status = earlier;
    let mut stalled = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let now = metrics.snapshot();
        if let Some(watchdog) = watchdog {
            if is_moving(&metrics, &now, &earlier, watchdog / 2) {
                if stalled {
                    tracing::info!("the pipeline moves again; feeding the watchdog");
                    stalled = false;
                }
                notify(&[NotifyState::Watchdog]);
            } else if !stalled {
                tracing::error!(
                    in_flight = now.in_flight(),
                    write_errors = now.write_errors,
                    "the pipeline is stalled; not feeding the watchdog"
                );
                stalled = true;
            }
        }
        earlier = now;
        if now.at_ms.saturating_sub(last_status.at_ms) >= STATUS_INTERVAL.as_millis() as u64 {
            notify(&[NotifyState::Status(&status_line(&now, &last_status))]);
            last_status = now;
        }
    }
}

/// Installs SIGTERM/SIGINT handlers now (so a signal that comes while the
/// gateway starts — during a schema migration, or right after READY — is
/// not lost) and returns the future that, once spawned, cancels
/// `shutdown` on the first of them, telling systemd we stop. Call it
/// inside the runtime, before starting anything.
pub fn stop_on_signal(shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = shutdown.cancelled() => return,
        };
        tracing::info!(
            signal = name,
            "shutting down: stopping drivers, committing what is in flight"
        );
        stopping();
        shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_long_start_asks_for_more_time_and_feeds_the_watchdog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        // SAFETY: nextest runs each test in its own process; nothing else
        // reads the environment concurrently here.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        let step = std::time::Duration::from_millis(20);
        let _ = tokio::time::timeout(step * 7 + step / 2, super::keep_starting("migrating", step))
            .await;
        socket.set_nonblocking(true).expect("nonblocking");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!((2..=7).contains(&got.len()), "{got:?}");
        for message in got {
            assert_eq!(
                message,
                "EXTEND_TIMEOUT_USEC=30000000\nWATCHDOG=1\nSTATUS=migrating\n"
            );
        }
    }

    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    #[test]
    fn stuck_readings_or_a_silent_writer_stop_the_watchdog() {
        let metrics = Metrics::new();
        let interval = Duration::from_secs(10);
        metrics
            .writer_heartbeat_ms
            .store(metrics.uptime_ms(), Relaxed);
        let idle = Snapshot::default();
        assert!(
            is_moving(&metrics, &idle, &idle, interval),
            "idle and alive is healthy"
        );

        let waiting = Snapshot {
            writer_pending: 5,
            committed: 10,
            ..idle
        };
        assert!(
            is_moving(&metrics, &waiting, &idle, interval),
            "new work is not a stall"
        );
        assert!(
            !is_moving(&metrics, &waiting, &waiting, interval),
            "same work, nothing committed"
        );
        let progressed = Snapshot {
            committed: 20,
            ..waiting
        };
        assert!(is_moving(&metrics, &progressed, &waiting, interval));

        let silent = Duration::from_millis(1);
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            !is_moving(&metrics, &idle, &idle, silent),
            "no heartbeat: stalled"
        );
    }
}
