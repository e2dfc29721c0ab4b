//! The shape every driver takes. Its configuration section (a
//! `<Proto>Config`, one table of the gateway's file) implements
//! [`DriverConfig`]: it validates itself, names the devices it knows, and
//! `build`s a running [`Component`] — the task (which honours shutdown),
//! its typed telemetry, its devices' counters, and its write queues when
//! it can write. The gateway starts, observes and stops components
//! without knowing their protocol.
//!
//! [`DriversConfig`](crate::DriversConfig) is generated from the one
//! registration list in `lib.rs` by the `drivers!` macro here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use biota_common::config::{ConfigError, Validate};
use biota_common::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

use crate::command::CommandSender;
use crate::stats::DeviceStats;
use crate::{DeviceBinding, SampleSink};

/// A driver's error, boxed so the gateway handles every driver alike; its
/// `Display` says what failed and its source chain why.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a driver gets to build its running component.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Where its samples go.
    pub sink: SampleSink,
    /// Cancelled when the gateway stops: the task must end soon after.
    pub shutdown: CancellationToken,
}

/// A driver built from its configuration, not yet running: what can fail
/// on the environment (a port taken, a certificate unreadable) has been
/// tried, the task has not started.
pub struct Component {
    /// Runs the driver until the shutdown token of its [`BuildContext`]
    /// is cancelled. The gateway spawns it.
    pub task: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
    /// Counters and state the status, `/metrics` and the console show
    /// under the driver's name. Default: none.
    pub telemetry: Option<Arc<dyn Telemetry>>,
    /// Per-device transaction counters, for drivers that poll devices.
    pub devices: Vec<Arc<DeviceStats>>,
    /// Where each device's writes go, for drivers that can write.
    pub writers: Vec<(Arc<str>, CommandSender)>,
}

impl Component {
    /// A component that only runs `task`; add what it has with the fields.
    pub fn task(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            task: Box::pin(task),
            telemetry: None,
            devices: Vec::new(),
            writers: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("telemetry", &self.telemetry.is_some())
            .field("devices", &self.devices.len())
            .field("writers", &self.writers.len())
            .finish_non_exhaustive()
    }
}

/// A driver's configuration section.
pub trait DriverConfig: Validate + Send + Sync {
    /// Every device the configuration names, with its profile, for the
    /// gateway's profile binding and command routing. `path` is the
    /// section's key path (`drivers.modbus`).
    fn devices(&self, path: &str) -> Vec<DeviceBinding>;

    /// Profiles named for devices only known at run time (an MQTT topic
    /// capture, a CoAP path), with the key path that names each, so the
    /// gateway can check they exist. Default: none.
    fn dynamic_profiles(&self, _path: &str) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Builds the running component. Binds what it listens on, so that a
    /// taken port fails here, before the gateway has started anything.
    fn build(&self, context: BuildContext) -> Result<Component, BoxError>;
}

/// A driver that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("drivers.{driver}: {source}")]
pub struct DriverError {
    /// Its registered name (`mqtt`).
    pub driver: &'static str,
    #[source]
    pub source: BoxError,
}

/// Generates the driver modules, [`crate::DriversConfig`] (one optional
/// section per driver) and its iteration, from one line per driver:
/// `name: module::ConfigType,` with the section's doc comment.
macro_rules! drivers {
    ($($(#[$doc:meta])* $name:ident : $module:ident :: $config:ident,)+) => {
        $(pub mod $module;)+

        /// Every southbound driver's configuration: the `[drivers]` table,
        /// one optional section per registered driver.
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct DriversConfig {
            $(
                $(#[$doc])*
                #[serde(default)]
                pub $name: Option<$module::$config>,
            )+
        }

        impl DriversConfig {
            /// The configured drivers' sections with their names, in
            /// registration order.
            pub fn sections(&self) -> Vec<(&'static str, &dyn $crate::component::DriverConfig)> {
                let mut sections: Vec<(&'static str, &dyn $crate::component::DriverConfig)> =
                    Vec::new();
                $(
                    if let Some(section) = &self.$name {
                        sections.push((stringify!($name), section));
                    }
                )+
                sections
            }
        }
    };
}
pub(crate) use drivers;

impl crate::DriversConfig {
    /// Every configured driver's own validation; `prefix` is where this
    /// table sits in the file (`drivers`).
    pub fn validate(&self, prefix: &str, errors: &mut Vec<ConfigError>) {
        for (name, section) in self.sections() {
            section.validate(&biota_common::config::key_path(prefix, name), errors);
        }
    }

    /// Every statically configured device, for profile binding.
    pub fn devices(&self, prefix: &str) -> Vec<DeviceBinding> {
        self.sections()
            .into_iter()
            .flat_map(|(name, section)| {
                section.devices(&biota_common::config::key_path(prefix, name))
            })
            .collect()
    }

    /// Profiles named for devices only known at run time, with their key paths.
    pub fn dynamic_profiles(&self, prefix: &str) -> Vec<(String, String)> {
        self.sections()
            .into_iter()
            .flat_map(|(name, section)| {
                section.dynamic_profiles(&biota_common::config::key_path(prefix, name))
            })
            .collect()
    }

    /// Builds every configured driver, in registration order; the first
    /// that fails ends the build.
    pub fn build(
        &self,
        context: &BuildContext,
    ) -> Result<Vec<(&'static str, Component)>, DriverError> {
        self.sections()
            .into_iter()
            .map(|(driver, section)| {
                section
                    .build(context.clone())
                    .map(|component| (driver, component))
                    .map_err(|source| DriverError { driver, source })
            })
            .collect()
    }
}
