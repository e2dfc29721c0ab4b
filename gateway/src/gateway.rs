//! The one place the running gateway is assembled: [`Gateway::start`]
//! builds every driver and service from the configuration, in the order
//! that lets what can fail on the environment fail first, starts them on
//! [`Services`], and [`Gateway::stopped`] stops them in the stated order
//! with a bounded wait.
//!
//! ```text
//! drivers ─► SampleBatch ─► normalizer ─► ReadingBatch ─► store writer ─► SQLite
//!   (Inputs)                 (Pipeline)                    (Pipeline)       │
//! API, control socket, watchdog (Inputs)                                    ▼
//!                                  sealer, anchorer, uplink (Outputs) read the store
//! ```
//!
//! Stop order: `Inputs` (drivers stop and drop their senders, the API and
//! the control socket stop answering) → `Pipeline` (the normalizer drains,
//! the writer commits everything it received) → `Outputs` (sealing,
//! anchoring and the uplink stop). Bounded by `pipeline.shutdown_timeout`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use biota_common::channel::batch_channel;
use biota_common::telemetry::Telemetry;
use biota_drivers::{BuildContext, DriverError, SampleSink, sample_channel};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::anchor::{AnchorStartError, Anchoring};
use crate::api::config::DEFAULT_SSE_BUFFER;
use crate::api::{ApiError, ApiService, Wiring};
use crate::command::CommandBus;
use crate::config::GatewayConfig;
use crate::control::ControlServer;
use crate::live::LiveFeed;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::pipeline::NormalizerStage;
use crate::service::{Services, Stage};
use crate::status::Status;
use crate::store::writer::{ReadingBatch, WriterReport};
use crate::store::{StoreError, StoreWriter, WriterService};
use crate::uplink::Uplink;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cannot start the uplink: {0}")]
    Uplink(#[source] biota_common::tls::TlsError),
    #[error("cannot start anchoring: {0}")]
    Anchor(#[from] AnchorStartError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot start {service}: {source}")]
    Thread {
        service: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the store (a file, a disk) is what failed.
    pub fn is_store(&self) -> bool {
        matches!(
            self,
            StartError::Store(_) | StartError::Anchor(AnchorStartError::Store(_))
        )
    }
}

/// Where the gateway keeps what it does not take from the configuration.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The database file.
    pub db: PathBuf,
    /// The state directory (token file, control socket).
    pub state_dir: PathBuf,
    /// The control socket, when the command line should reach this gateway.
    pub control_socket: Option<PathBuf>,
}

impl Paths {
    /// A database whose directory is the state directory, and no control
    /// socket: tests, benchmarks and embedded uses.
    pub fn for_db(db: &Path) -> Self {
        Self {
            db: db.to_owned(),
            state_dir: db.parent().map(Path::to_owned).unwrap_or_default(),
            control_socket: None,
        }
    }
}

/// How the pipeline ended.
#[derive(Debug, Clone)]
pub struct StopReport {
    pub writer: WriterReport,
    /// The drain did not finish within `pipeline.shutdown_timeout`.
    pub timed_out: bool,
    /// Services still running when the time was up.
    pub late: Vec<&'static str>,
}

/// The running gateway.
pub struct Gateway {
    services: Services,
    metrics: Arc<Metrics>,
    status: Status,
    /// Held until shutdown, so that a gateway with no (or only finished)
    /// drivers keeps its normalizer and writer running instead of taking
    /// "every sender is gone" for the end of the pipeline.
    idle_sink: Option<SampleSink>,
    writer_report: oneshot::Receiver<WriterReport>,
    shutdown: CancellationToken,
    shutdown_timeout: std::time::Duration,
    api_address: Option<SocketAddr>,
    control_socket: Option<PathBuf>,
}

impl Gateway {
    /// Builds and starts everything `config` asks for. Returns once all of
    /// it runs: the moment to signal readiness. Cancelling `shutdown`
    /// (before or after) stops it; [`Gateway::stopped`] waits for that.
    pub async fn start(
        config: &GatewayConfig,
        paths: &Paths,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let mut services = Services::new();
        let capacity = config.pipeline.queue_capacity;
        let (reading_tx, reading_rx) = batch_channel::<ReadingBatch>(capacity);
        let (sample_tx, sample_rx) = sample_channel(capacity);
        let metrics = Arc::new(Metrics::with_queues(
            sample_rx.depth_gauge(),
            reading_rx.depth_gauge(),
        ));
        // First what can fail on the environment (a listener's port, a
        // certificate), so that nothing else has started when it does.
        let drivers = config.drivers.build(&BuildContext {
            sink: sample_tx.clone(),
            shutdown: services.token(Stage::Inputs),
        })?;
        let uplink = match config.uplink.clone() {
            Some(up) => Some(
                Uplink::new(up, paths.db.clone(), metrics.clone()).map_err(StartError::Uplink)?,
            ),
            None => None,
        };

        let writer = {
            let (path, store, metrics) = (paths.db.clone(), config.store.clone(), metrics.clone());
            let open =
                tokio::task::spawn_blocking(move || StoreWriter::open(&path, &store, metrics));
            tokio::select! {
                opened = open => opened.map_err(|e| StartError::Thread {
                    service: "the store",
                    source: std::io::Error::other(e),
                })??,
                never = crate::systemd::keep_starting(
                    "opening the store (migrating its schema)",
                    std::time::Duration::from_secs(10),
                ) => match never {},
            }
        };
        tracing::info!(
            path = %paths.db.display(),
            next_seq = writer.next_seq(),
            "store open"
        );
        // The live feed keeps `sse_buffer` commits for its slowest subscriber.
        let live = LiveFeed::new(
            config
                .api
                .as_ref()
                .map_or(DEFAULT_SSE_BUFFER, |a| a.sse_buffer),
        );
        let (writer, writer_report) =
            WriterService::new(writer.with_live(live.clone()), reading_rx, &config.store).map_err(
                |source| StartError::Thread {
                    service: "the store writer",
                    source,
                },
            )?;
        let anchoring = if config.anchor.enabled {
            Some(Anchoring::new(
                &config.anchor,
                &paths.db,
                config.store.synchronous,
                metrics.clone(),
            )?)
        } else {
            None
        };

        // The status every reader shares: devices and every component.
        let bindings = config.drivers.devices("drivers");
        let mut sections: Vec<(&'static str, Arc<dyn Telemetry>)> = Vec::new();
        let mut devices = Vec::new();
        let mut writers = Vec::new();
        let mut tasks = Vec::new();
        for (name, component) in drivers {
            if let Some(telemetry) = component.telemetry {
                sections.push((name, telemetry));
            }
            devices.extend(component.devices);
            writers.extend(component.writers);
            tasks.push((name, component.task));
        }
        if let Some(up) = &uplink {
            sections.push(("uplink", up.telemetry()));
        }
        if let Some(a) = &anchoring {
            sections.push(("anchoring", a.telemetry.clone()));
        }
        let status = Status {
            metrics: metrics.clone(),
            devices: devices.into(),
            sections: sections.into(),
        };
        let commands = CommandBus::new(&config.profiles, &bindings, writers, metrics.clone());

        let thread = |service: &'static str| move |source| StartError::Thread { service, source };
        // Pipeline first (it ends by itself once its inputs are gone),
        // then outputs, then inputs.
        services
            .start_thread(Stage::Pipeline, writer)
            .map_err(thread("the store writer"))?;
        let normalizer = Normalizer::new(&config.profiles, &bindings, metrics.clone());
        services
            .start_thread(
                Stage::Pipeline,
                NormalizerStage::new(normalizer, sample_rx, reading_tx),
            )
            .map_err(thread("the normalizer"))?;
        if let Some(a) = anchoring {
            services
                .start_thread(Stage::Outputs, a.sealer)
                .map_err(thread("the sealer"))?;
            if let Some(anchorer) = a.anchorer {
                services
                    .start_thread(Stage::Outputs, anchorer)
                    .map_err(thread("the anchorer"))?;
            }
        }
        if let Some(up) = uplink {
            services
                .start_thread(Stage::Outputs, up)
                .map_err(thread("the uplink"))?;
        }
        for (name, task) in tasks {
            services.spawn(Stage::Inputs, name, task);
        }
        services.start(
            Stage::Inputs,
            crate::systemd::Watchdog::new(metrics.clone()),
        );

        let mut gateway = Self {
            services,
            metrics,
            status,
            idle_sink: Some(sample_tx),
            writer_report,
            shutdown,
            shutdown_timeout: config.pipeline.shutdown_timeout,
            api_address: None,
            control_socket: None,
        };
        // The API is configured on purpose: if it cannot listen, the start
        // fails (as a driver's taken port does) rather than run without it.
        if let Some(api) = &config.api {
            let wiring = Wiring {
                db: paths.db.clone(),
                token_file: config.token_path(&paths.state_dir),
                bindings: bindings.clone(),
                anchoring: config.anchor.enabled,
                commands: commands.clone(),
                status: gateway.status.clone(),
                live,
            };
            let started = ApiService::new(api, wiring, gateway.services.token(Stage::Inputs))
                .map_err(StartError::from)
                .and_then(|api| {
                    let address = api.address();
                    gateway
                        .services
                        .start_thread(Stage::Inputs, api)
                        .map_err(thread("the API"))?;
                    Ok(address)
                });
            match started {
                Ok(address) => gateway.api_address = Some(address),
                Err(e) => {
                    gateway.abort().await;
                    return Err(e);
                }
            }
        }
        // Without the socket the gateway still collects data; only the
        // command line's writes and status are unavailable.
        if let Some(path) = &paths.control_socket {
            match ControlServer::bind(path, commands, gateway.status.clone()) {
                Ok(server) => {
                    gateway.control_socket = Some(path.clone());
                    gateway.services.start(Stage::Inputs, server);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), "control socket unavailable: {e}")
                }
            }
        }
        Ok(gateway)
    }

    /// Stops what a failed start had already started.
    async fn abort(mut self) {
        self.shutdown.cancel();
        drop(self.idle_sink.take());
        self.services.abort();
        let _ = self.services.stop(self.shutdown_timeout).await;
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the gateway reports about itself (the control socket's and
    /// the API's status, `/metrics`).
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// A sender into the pipeline, for in-process producers (tests, the
    /// benchmark); `None` once shutdown began.
    pub fn sample_sink(&self) -> Option<SampleSink> {
        self.idle_sink.clone()
    }

    /// Where the API listens, when `[api]` is configured.
    pub fn api_address(&self) -> Option<SocketAddr> {
        self.api_address
    }

    /// The control socket, when it could be bound.
    pub fn control_socket(&self) -> Option<&Path> {
        self.control_socket.as_deref()
    }

    /// Waits until the shutdown token is cancelled, then stops everything
    /// in order (see the module's doc) and reports how it ended.
    pub async fn stopped(mut self) -> StopReport {
        self.shutdown.cancelled().await;
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let mut late = self.services.stop_stage(Stage::Inputs, deadline).await;
        drop(self.idle_sink.take());
        late.extend(self.services.stop_stage(Stage::Pipeline, deadline).await);
        late.extend(self.services.stop_stage(Stage::Outputs, deadline).await);
        match self.writer_report.try_recv() {
            Ok(writer) if late.is_empty() => StopReport {
                writer,
                timed_out: false,
                late,
            },
            _ => {
                let snapshot = self.metrics.snapshot();
                tracing::error!(
                    uncommitted = snapshot.in_flight(),
                    timeout = ?self.shutdown_timeout,
                    services = ?late,
                    "shutdown timed out before everything was stopped"
                );
                StopReport {
                    writer: WriterReport {
                        committed: snapshot.committed,
                        next_seq: snapshot.last_seq + 1,
                        lost: snapshot.in_flight(),
                    },
                    timed_out: true,
                    late,
                }
            }
        }
    }
}
