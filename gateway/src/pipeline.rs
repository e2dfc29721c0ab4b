//! Assembles and runs the data path:
//!
//! ```text
//! drivers ─► SampleBatch ─► normalizer ─► Vec<Reading> ─► store writer (own thread)
//! ```
//!
//! Every channel is bounded ([`biota_drivers::batch_channel`]), so a slow
//! writer makes the normalizer wait and the normalizer makes drivers wait.
//!
//! Shutdown order, driven by one cancellation token: drivers stop and drop
//! their senders → the normalizer drains its queue and drops its sender →
//! the writer commits everything it received and ends. [`Gateway::stopped`]
//! waits for that, bounded by `pipeline.shutdown_timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use biota_drivers::coap::{CoapDriver, CoapError, CoapStats};
use biota_drivers::modbus::ModbusDriver;
use biota_drivers::mqtt::{MqttDriver, MqttError, MqttStats};
use biota_drivers::stats::DeviceStats;
use biota_drivers::{
    BatchSender, CommitOutcome, SampleSink, SampleSource, batch_channel, sample_channel,
    sim::SimDriver,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::anchor::Anchoring;
use crate::api::ApiError;
use crate::command::CommandBus;
use crate::config::GatewayConfig;
use crate::control::{ControlServer, StatusFn};
use crate::live::LiveFeed;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::store::writer::{ReadingBatch, WriterReport};
use crate::store::{StoreError, StoreWriter, WriterHandle};
use crate::uplink::{self, UplinkStats};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the store writer thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error(transparent)]
    Coap(#[from] CoapError),
    #[error("cannot start the uplink: {0}")]
    Uplink(#[source] std::io::Error),
    #[error("cannot start anchoring: {0}")]
    Anchor(#[from] crate::anchor::AnchorStartError),
}

/// How the pipeline ended.
#[derive(Debug, Clone)]
pub struct StopReport {
    pub writer: WriterReport,
    /// The drain did not finish within `pipeline.shutdown_timeout`.
    pub timed_out: bool,
}

/// The running pipeline.
pub struct Gateway {
    metrics: Arc<Metrics>,
    commands: CommandBus,
    /// Transaction counters of every device whose driver keeps them.
    device_stats: Arc<[Arc<DeviceStats>]>,
    mqtt_stats: Option<Arc<MqttStats>>,
    coap_stats: Option<Arc<CoapStats>>,
    uplink: Option<(Arc<UplinkStats>, std::thread::JoinHandle<()>)>,
    anchoring: Option<Arc<Anchoring>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Held until shutdown, so that a gateway with no (or only finished)
    /// drivers keeps its normalizer and writer running instead of taking
    /// "every sender is gone" for the end of the pipeline.
    idle_sink: Option<SampleSink>,
    writer: WriterHandle,
    shutdown_timeout: std::time::Duration,
    live: LiveFeed,
    api_thread: Option<std::thread::JoinHandle<()>>,
}

/// The gateway's counters and per-driver statistics, shared by the
/// control socket, the API and `/metrics`. Cheap to clone.
#[derive(Clone)]
pub struct Observed {
    pub metrics: Arc<Metrics>,
    pub devices: Arc<[Arc<DeviceStats>]>,
    pub mqtt: Option<Arc<MqttStats>>,
    pub coap: Option<Arc<CoapStats>>,
    pub uplink: Option<Arc<UplinkStats>>,
    pub anchoring: Option<Arc<Anchoring>>,
}

impl Observed {
    /// The status the control socket's `devices` request and the API's
    /// `/v1/status` answer: every device's counters, and the MQTT, CoAP
    /// and uplink statistics of those that run.
    pub fn status(&self) -> serde_json::Value {
        let devices: Vec<_> = self.devices.iter().map(|s| s.snapshot()).collect();
        let mut status = serde_json::json!({ "devices": devices });
        if let Some(m) = &self.mqtt {
            status["mqtt"] = m.to_json();
        }
        if let Some(c) = &self.coap {
            status["coap"] = c.to_json();
        }
        if let Some(u) = &self.uplink {
            status["uplink"] = u.to_json(self.metrics.last_seq.load(Relaxed));
        }
        if let Some(a) = &self.anchoring {
            status["anchor"] = a.to_json();
        }
        status
    }
}

impl Gateway {
    /// Opens the store and starts the writer, the normalizer and every
    /// configured driver. Returns once all of them run: the moment to
    /// signal readiness. Cancelling `shutdown` stops them in order.
    pub async fn start(
        config: &GatewayConfig,
        db_path: &Path,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let capacity = config.pipeline.queue_capacity;
        let (reading_tx, reading_rx) = batch_channel::<ReadingBatch>(capacity);
        let (sample_tx, sample_rx) = sample_channel(capacity);
        let metrics = Arc::new(Metrics::with_queues(
            sample_rx.depth_gauge(),
            reading_rx.depth_gauge(),
        ));
        // First what can fail on the environment (a listener's port), so
        // that nothing else has started when it does.
        let mqtt = match config.drivers.mqtt.clone() {
            Some(mqtt) => Some(MqttDriver::start(mqtt, sample_tx.clone())?),
            None => None,
        };
        let coap = match config.drivers.coap.clone() {
            Some(coap) => Some(CoapDriver::start(coap, sample_tx.clone())?),
            None => None,
        };
        let writer = {
            let (path, store, metrics) =
                (db_path.to_owned(), config.store.clone(), metrics.clone());
            let open =
                tokio::task::spawn_blocking(move || StoreWriter::open(&path, &store, metrics));
            tokio::select! {
                opened = open => opened.map_err(|e| StartError::Thread(std::io::Error::other(e)))??,
                never = crate::systemd::keep_starting(
                    "opening the store (migrating its schema)",
                    std::time::Duration::from_secs(10),
                ) => match never {},
            }
        };
        tracing::info!(
            path = %db_path.display(),
            next_seq = writer.next_seq(),
            "store open"
        );
        // The live feed keeps `sse_buffer` commits for its slowest subscriber.
        let live = LiveFeed::new(config.api.as_ref().map_or(256, |a| a.sse_buffer));
        let writer = writer
            .with_live(live.clone())
            .spawn(reading_rx, &config.store)
            .map_err(StartError::Thread)?;

        let anchoring = if config.anchor.enabled {
            Some(Arc::new(Anchoring::start(
                &config.anchor,
                db_path,
                None,
                config.store.synchronous,
                shutdown.clone(),
            )?))
        } else {
            None
        };

        let tasks = TaskTracker::new();
        let normalizer = Normalizer::new(config, metrics.clone());
        // Its own thread: on the shared runtime it would queue behind every
        // driver and API task at each wake-up, and every acknowledgement
        // (CoAP) waits for it.
        let (normalized, normalizer_done) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("normalizer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().build() {
                    Ok(rt) => rt.block_on(run_normalizer(normalizer, sample_rx, reading_tx)),
                    Err(e) => tracing::error!(error = %e, "cannot start the normalizer's runtime"),
                }
                let _ = normalized.send(());
            })
            .map_err(StartError::Thread)?;
        tasks.spawn(async move {
            let _ = normalizer_done.await;
        });
        if let Some(sim) = config.drivers.sim.clone() {
            tasks.spawn(SimDriver::new(sim, sample_tx.clone()).run(shutdown.clone()));
        }
        let mut command_senders = Vec::new();
        let mut device_stats = Vec::new();
        if let Some(modbus) = config.drivers.modbus.clone() {
            let driver = ModbusDriver::new(modbus, sample_tx.clone());
            command_senders.extend(driver.command_senders());
            device_stats.extend(driver.stats());
            tasks.spawn(driver.run(shutdown.clone()));
        }
        let mqtt_stats = mqtt.as_ref().map(MqttDriver::stats);
        let coap_stats = coap.as_ref().map(CoapDriver::stats);
        if let Some(driver) = coap {
            tasks.spawn(driver.run(shutdown.clone()));
        }
        let uplink = match config.uplink.clone() {
            Some(up) => Some(
                uplink::start(up, db_path.to_owned(), metrics.clone(), shutdown.clone())
                    .map_err(StartError::Uplink)?,
            ),
            None => None,
        };
        if let Some(driver) = mqtt {
            tasks.spawn(driver.run(shutdown.clone()));
        }
        tasks.close();
        let commands = CommandBus::new(config, command_senders, metrics.clone());
        Ok(Self {
            metrics,
            commands,
            device_stats: device_stats.into(),
            mqtt_stats,
            coap_stats,
            uplink,
            anchoring,
            shutdown,
            tasks,
            idle_sink: Some(sample_tx),
            writer,
            shutdown_timeout: config.pipeline.shutdown_timeout,
            live,
            api_thread: None,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A sender into the pipeline, for in-process producers (tests, the
    /// benchmark); `None` once shutdown began.
    pub fn sample_sink(&self) -> Option<SampleSink> {
        self.idle_sink.clone()
    }

    /// The command path into the devices (writes).
    pub fn commands(&self) -> &CommandBus {
        &self.commands
    }

    /// Per-device transaction counters (polls, timeouts, CRC errors, ...).
    pub fn device_stats(&self) -> &Arc<[Arc<DeviceStats>]> {
        &self.device_stats
    }

    /// Sealing and anchoring, when enabled.
    pub fn anchoring(&self) -> Option<&Arc<Anchoring>> {
        self.anchoring.as_ref()
    }

    /// What the gateway exposes about itself: the counters and per-driver
    /// statistics the control socket, the API and `/metrics` report.
    pub fn observed(&self) -> Observed {
        Observed {
            metrics: self.metrics.clone(),
            devices: self.device_stats.clone(),
            mqtt: self.mqtt_stats.clone(),
            coap: self.coap_stats.clone(),
            uplink: self.uplink.as_ref().map(|(s, _)| s.clone()),
            anchoring: self.anchoring.clone(),
        }
    }

    /// Committed readings as they are stored (the API's stream).
    pub fn live(&self) -> &LiveFeed {
        &self.live
    }

    /// Serves the control socket at `path` until shutdown (see
    /// [`crate::control`]).
    pub fn serve_control(&self, path: &Path) -> std::io::Result<PathBuf> {
        let server = ControlServer::bind(path)?;
        let observed = self.observed();
        let status: StatusFn = Arc::new(move || observed.status());
        let path = server.path().to_owned();
        tokio::spawn(server.serve(self.commands.clone(), status, self.shutdown.clone()));
        Ok(path)
    }

    /// Starts the HTTP API of `config.api` (if configured) on a thread of
    /// its own until shutdown; returns the address it listens on. The
    /// listener is bound before this returns, so a taken port is an error
    /// here, not later.
    pub fn serve_api(
        &mut self,
        config: &GatewayConfig,
        db_path: &Path,
        state_dir: &Path,
    ) -> Result<Option<std::net::SocketAddr>, ApiError> {
        let Some(api) = &config.api else {
            return Ok(None);
        };
        let (address, thread) = crate::api::start(
            api,
            crate::api::Wiring {
                config: config.clone(),
                db: db_path.to_owned(),
                token_file: config.token_path(state_dir),
                commands: self.commands.clone(),
                observed: self.observed(),
                live: self.live.clone(),
            },
            self.shutdown.clone(),
        )?;
        self.api_thread = Some(thread);
        Ok(Some(address))
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Waits until the pipeline has stopped (after the shutdown token is
    /// cancelled) and everything in flight is committed, or the shutdown
    /// timeout passed.
    pub async fn stopped(mut self) -> StopReport {
        self.shutdown.cancelled().await;
        drop(self.idle_sink.take());
        let writer = self.writer;
        let tasks = self.tasks;
        let uplink = self.uplink.take().map(|(_, thread)| thread);
        let anchoring = self.anchoring.take();
        let api = self.api_thread.take();
        let drain = async move {
            tasks.wait().await;
            if let Some(a) = anchoring {
                let _ = tokio::task::spawn_blocking(move || a.join()).await;
            }
            if let Some(thread) = api {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            if let Some(thread) = uplink {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .unwrap_or_default()
        };
        match tokio::time::timeout(self.shutdown_timeout, drain).await {
            Ok(writer) => StopReport {
                writer,
                timed_out: false,
            },
            Err(_) => {
                let snapshot = self.metrics.snapshot();
                tracing::error!(
                    uncommitted = snapshot.in_flight(),
                    timeout = ?self.shutdown_timeout,
                    "shutdown timed out before everything was committed"
                );
                StopReport {
                    writer: WriterReport {
                        committed: snapshot.committed,
                        next_seq: snapshot.last_seq + 1,
                        lost: snapshot.in_flight(),
                    },
                    timed_out: true,
                }
            }
        }
    }
}

async fn run_normalizer(
    mut normalizer: Normalizer,
    mut input: SampleSource,
    output: BatchSender<ReadingBatch>,
) {
    while let Some(mut batch) = input.recv().await {
        let samples = batch.samples.len();
        let notice = batch.notice.take();
        let mut readings = Vec::with_capacity(samples);
        normalizer.normalize(batch, &mut readings);
        let dropped = samples - readings.len();
        if readings.is_empty() {
            // Nothing to wait for: tell the driver now.
            if let Some(notice) = notice {
                notice.fire(CommitOutcome::NothingStored { dropped });
            }
            continue;
        }
        let batch = ReadingBatch {
            readings,
            notice: notice.map(|n| (n, dropped)),
        };
        if output.send(batch).await.is_err() {
            tracing::error!("the store writer stopped; the normalizer stops too");
            return;
        }
    }
}
