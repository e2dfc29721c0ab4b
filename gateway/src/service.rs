//! One lifecycle for everything that runs in the gateway.
//!
//! A **service** (the store writer, the normalizer, the sealer and the
//! anchorer, the uplink, the API, the control socket, the watchdog) is a
//! struct with a `new(...)` that does what can fail — bind a port, open a
//! file — and an `async fn run(self, shutdown)` that runs until the
//! shutdown token is cancelled (or, for the pipeline's stages, until its
//! input closes). It implements [`Service`] when it runs on the shared
//! runtime, or [`ThreadService`] when it runs on a thread (and runtime)
//! of its own — work that blocks (SQLite), must not queue behind other
//! tasks, or holds what cannot cross threads. A **driver** is started
//! the same way from its built `Component` (`biota_drivers::component`).
//!
//! [`Services`] is where they run: [`Services::start`] and
//! [`Services::start_thread`] start and track them; [`Services::stop`]
//! stops them stage by stage in the order of [`Stage`], each stage
//! waiting for its members within what is left of one deadline, and
//! names whatever did not stop.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// When a service stops: every member of a stage has ended (or the
/// deadline passed) before the next stage is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// What brings data or requests in: drivers, the API, the control
    /// socket, the watchdog. Stopped first, so nothing new arrives.
    Inputs = 0,
    /// The data path: the normalizer drains its queue, the writer commits
    /// everything it received. They end when their input closes.
    Pipeline = 1,
    /// What reads the store afterwards: sealing and anchoring, the uplink.
    /// Stopped last, so they see the final commits.
    Outputs = 2,
}

const STAGES: [Stage; 3] = [Stage::Inputs, Stage::Pipeline, Stage::Outputs];

/// A long-running part of the gateway on the shared runtime. Build it
/// with its own `new()`.
pub trait Service: Send + 'static {
    /// Its name: what logs and a stop that timed out call it.
    const NAME: &'static str;
    /// Runs until `shutdown` is cancelled (or its input closes).
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send;
}

/// A long-running part of the gateway on a thread and runtime of its own.
/// Its future is made and run on that thread, so it need not be `Send`.
pub trait ThreadService: Send + 'static {
    /// Its name: the thread's, and what logs and a stop that timed out
    /// call it.
    const NAME: &'static str;
    /// Worker threads of its runtime: 1 is a single-threaded runtime on
    /// the service's own thread.
    const WORKERS: usize = 1;
    /// Runs until `shutdown` is cancelled (or its input closes).
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()>;
}

struct Running {
    name: &'static str,
    done: oneshot::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The running services and driver tasks, by stage.
pub struct Services {
    tokens: [CancellationToken; 3],
    running: [Vec<Running>; 3],
}

impl Default for Services {
    fn default() -> Self {
        Self::new()
    }
}

impl Services {
    pub fn new() -> Self {
        Self {
            tokens: Default::default(),
            running: Default::default(),
        }
    }

    /// The token a stage's members watch; cancelled when the stage stops.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.tokens[stage as usize].clone()
    }

    /// Starts `service` in `stage` on the shared runtime.
    pub fn start<S: Service>(&mut self, stage: Stage, service: S) {
        let shutdown = self.token(stage);
        self.spawn(stage, S::NAME, service.run(shutdown));
    }

    /// Tracks `task` (a driver's, whose token came with its build) in
    /// `stage`, on the shared runtime.
    pub fn spawn(
        &mut self,
        stage: Stage,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, done) = oneshot::channel();
        tokio::spawn(async move {
            task.await;
            let _ = tx.send(());
        });
        self.running[stage as usize].push(Running {
            name,
            done,
            thread: None,
        });
    }

    /// Starts `service` in `stage` on a thread and runtime of its own.
    pub fn start_thread<S: ThreadService>(
        &mut self,
        stage: Stage,
        service: S,
    ) -> std::io::Result<()> {
        let shutdown = self.token(stage);
        let runtime = if S::WORKERS <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(S::WORKERS)
                .thread_name(S::NAME)
                .enable_all()
                .build()?
        };
        let (tx, done) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(S::NAME.into())
            .spawn(move || {
                runtime.block_on(service.run(shutdown));
                // Tasks the service left behind (connections past their
                // drain) end with its runtime.
                runtime.shutdown_timeout(Duration::from_secs(1));
                let _ = tx.send(());
            })?;
        self.running[stage as usize].push(Running {
            name: S::NAME,
            done,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Stops `stage`: cancels its token and waits for its members until
    /// `deadline`. Returns the names of those still running then.
    pub async fn stop_stage(&mut self, stage: Stage, deadline: Instant) -> Vec<&'static str> {
        self.tokens[stage as usize].cancel();
        let mut late = Vec::new();
        for running in std::mem::take(&mut self.running[stage as usize]) {
            match tokio::time::timeout_at(deadline, running.done).await {
                // Ended (or its task panicked, which dropped the sender).
                Ok(_) => {
                    if let Some(thread) = running.thread
                        && thread.join().is_err()
                    {
                        tracing::error!(service = running.name, "the service's thread panicked");
                    }
                }
                Err(_) => late.push(running.name),
            }
        }
        if !late.is_empty() {
            tracing::error!(?stage, services = ?late, "did not stop in time");
        }
        late
    }

    /// Stops every stage in order within `timeout`; returns the names of
    /// what did not stop in time.
    pub async fn stop(&mut self, timeout: Duration) -> Vec<&'static str> {
        let deadline = Instant::now() + timeout;
        let mut late = Vec::new();
        for stage in STAGES {
            late.extend(self.stop_stage(stage, deadline).await);
        }
        late
    }

    /// Cancels every stage at once without waiting: for a start that
    /// failed half-way.
    pub fn abort(&self) {
        for token in &self.tokens {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Recorder {
        log: Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    }

    impl ThreadService for Recorder {
        const NAME: &'static str = "recorder";
        async fn run(self, shutdown: CancellationToken) {
            shutdown.cancelled().await;
            self.log.lock().expect("log").push(self.name);
        }
    }

    #[tokio::test]
    async fn stages_stop_in_order_and_a_stuck_service_is_named() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut services = Services::new();
        for (stage, name) in [
            (Stage::Outputs, "output"),
            (Stage::Inputs, "input"),
            (Stage::Pipeline, "pipeline"),
        ] {
            let log = log.clone();
            services
                .start_thread(stage, Recorder { log, name })
                .expect("thread");
        }
        let input_log = log.clone();
        let inputs = services.token(Stage::Inputs);
        services.spawn(Stage::Inputs, "task", async move {
            inputs.cancelled().await;
            input_log.lock().expect("log").push("task");
        });
        services.spawn(Stage::Outputs, "stuck", std::future::pending());
        let late = services.stop(Duration::from_millis(500)).await;
        assert_eq!(late, ["stuck"]);
        let order = log.lock().expect("log").clone();
        let position = |name| order.iter().position(|n| *n == name).expect(name);
        assert!(position("input") < position("pipeline"), "{order:?}");
        assert!(position("task") < position("pipeline"), "{order:?}");
        assert!(position("pipeline") < position("output"), "{order:?}");
    }
}
