//! Configuration of Modbus connections, buses, devices and register maps.
//!
//! A register map (`[drivers.modbus.maps.<name>]`) describes a kind of
//! device: its poll groups and, per point, the area, address, data type,
//! byte/word order and whether it may be written. Devices on TCP
//! connections and RTU buses name their map and unit id. Scaling, units
//! and renaming are the gateway's device profiles' job (`profile = ...`),
//! as for every other driver.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::codec::{DataType, Order};
use super::plan::{Area, MAX_READ_REGISTERS};

/// Registers one "write multiple registers" (16) request carries.
pub const MAX_WRITE_REGISTERS: u16 = 123;
use biota_common::time::serde_duration;
use biota_common::config::{ConfigError, HostPort, Parsed, Validate};

use crate::DeviceBinding;

/// `[drivers.modbus]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// `[[drivers.modbus.tcp]]`: TCP connections. Default: none.
    #[serde(default)]
    pub tcp: Vec<TcpConnectionConfig>,
    /// `[[drivers.modbus.rtu]]`: serial buses. Default: none.
    #[serde(default)]
    pub rtu: Vec<RtuBusConfig>,
    /// `[drivers.modbus.maps.<name>]`: register maps. Default: none.
    #[serde(default)]
    pub maps: BTreeMap<String, RegisterMap>,
}

/// One TCP connection: a device, or a TCP-to-RTU gateway with several
/// unit ids behind it sharing the connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConnectionConfig {
    /// `host:port`, e.g. `10.0.0.5:502`.
    pub address: Parsed<HostPort>,
    /// How long one request may take. Default: `1s`.
    #[serde(default = "default_tcp_timeout", with = "serde_duration")]
    pub timeout: Duration,
    /// First reconnect delay; it doubles (with jitter) up to `reconnect_max`.
    /// Default: `500ms`.
    #[serde(default = "default_reconnect_min", with = "serde_duration")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default: `30s`.
    #[serde(default = "default_reconnect_max", with = "serde_duration")]
    pub reconnect_max: Duration,
    /// The devices reached through it.
    pub devices: Vec<ModbusDeviceConfig>,
}

/// One serial bus and the slaves on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuBusConfig {
    /// Serial device, e.g. `/dev/ttyUSB0`.
    pub path: PathBuf,
    /// Bits per second. Default: 19200.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none`, `even` or `odd`. Default: `even` (the Modbus RTU default).
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8. Default: 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2. Default: 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// How long to wait for a slave's answer. Default: `200ms`.
    #[serde(default = "default_rtu_timeout", with = "serde_duration")]
    pub timeout: Duration,
    /// Pause after a response before the next request (slow slaves).
    /// Default: `0ms` (the 3.5-character silence always applies).
    #[serde(default, with = "serde_duration")]
    pub turnaround_delay: Duration,
    /// How long a slave that timed out is skipped. Default: `5s`.
    #[serde(default = "default_backoff", with = "serde_duration")]
    pub backoff: Duration,
    /// The slaves on the bus.
    pub devices: Vec<ModbusDeviceConfig>,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    #[default]
    Even,
    Odd,
}

/// A device: a unit id on a connection or bus, and its register map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDeviceConfig {
    /// Device id in the gateway.
    pub id: String,
    /// Unit (slave) id: 1–247 on RTU, 0–255 on TCP.
    pub unit: u8,
    /// Name of its register map (`[drivers.modbus.maps.<name>]`).
    pub map: String,
    /// Device profile that normalizes its samples. Default: none.
    #[serde(default)]
    pub profile: Option<String>,
}

/// `[drivers.modbus.maps.<name>]`: what to read from a kind of device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    /// Most unused registers read to merge two points into one request.
    /// Default: 8.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Most unused coils/inputs read to merge two points. Default: 64.
    #[serde(default = "default_max_bit_gap")]
    pub max_bit_gap: u16,
    /// Poll groups, each with its own interval.
    pub groups: Vec<PollGroupConfig>,
}

/// Points polled together at one interval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollGroupConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// Time between polls. Default: `1s`.
    #[serde(default = "default_interval", with = "serde_duration")]
    pub interval: Duration,
    pub points: Vec<PointMapConfig>,
}

/// One point of a register map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointMapConfig {
    /// Raw point name (a profile may rename it).
    pub name: String,
    /// `coil`, `discrete_input`, `input_register` or `holding_register`.
    pub area: Area,
    /// 0-based address (register 40001 is holding register 0).
    pub address: u16,
    /// `bool` (coils, discrete inputs), `bit`, `u16`, `i16`, `u32`, `i32`,
    /// `u64`, `i64`, `f32`, `f64`, `string` (registers).
    #[serde(rename = "type")]
    pub ty: DataType,
    /// `ABCD` (default), `CDAB`, `BADC` or `DCBA`.
    #[serde(default)]
    pub order: Order,
    /// Bit 0–15 of the register, for `type = "bit"`.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Registers of a `string` (two characters each).
    #[serde(default)]
    pub length: Option<u16>,
    /// Registers as the device's documentation states them; checked
    /// against the type (an f32 is 2). Default: derived from the type.
    #[serde(default)]
    pub count: Option<u16>,
    /// Whether the point may be written (coils and holding registers).
    /// Default: false.
    #[serde(default)]
    pub writable: bool,
    /// Read a written value back and compare. Default: false.
    #[serde(default)]
    pub verify: bool,
    /// Write with the "multiple" function codes (15 for a coil, 16 for
    /// a register) even when one coil or register would take 5 or 6:
    /// some devices only implement 15 and 16. Default: false.
    #[serde(default)]
    pub write_multiple: bool,
}

impl PointMapConfig {
    /// Registers (or bits) the point occupies.
    pub fn width(&self) -> u16 {
        self.ty.width(self.length.unwrap_or(0))
    }
}

fn default_tcp_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
fn default_baud() -> u32 {
    19_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_rtu_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_max_gap() -> u16 {
    8
}
fn default_max_bit_gap() -> u16 {
    64
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}

impl Validate for ModbusConfig {
    fn validate(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let mut err =
            |key_path: String, reason: String| errors.push(ConfigError { key_path, reason });
        for (name, map) in &self.maps {
            validate_map(&format!("{path}.maps.{name}"), map, &mut err);
        }
        let unit_check = |dpath: &str,
                          devices: &[ModbusDeviceConfig],
                          rtu: bool,
                          err: &mut dyn FnMut(String, String)| {
            let mut units = HashSet::new();
            for (d, device) in devices.iter().enumerate() {
                let key = format!("{dpath}.devices[{d}]");
                if rtu && !(1..=247).contains(&device.unit) {
                    err(
                        format!("{key}.unit"),
                        format!("an RTU slave id is 1..=247, got {}", device.unit),
                    );
                }
                if !units.insert(device.unit) {
                    err(
                        format!("{key}.unit"),
                        format!(
                            "unit {} is used twice on this {}",
                            device.unit,
                            if rtu { "bus" } else { "connection" }
                        ),
                    );
                }
                if !self.maps.contains_key(&device.map) {
                    let known: Vec<&str> = self.maps.keys().map(String::as_str).collect();
                    err(
                        format!("{key}.map"),
                        format!(
                            "register map `{}` is not defined (defined: {})",
                            device.map,
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
        };
        for (c, tcp) in self.tcp.iter().enumerate() {
            let cpath = format!("{path}.tcp[{c}]");
            if tcp.address.value().is_none() {
                err(
                    format!("{cpath}.address"),
                    format!("`{}` is not host:port (e.g. 10.0.0.5:502)", tcp.address),
                );
            }
            if tcp.timeout < Duration::from_millis(1) {
                err(format!("{cpath}.timeout"), "must be at least 1ms".into());
            }
            if tcp.reconnect_min.is_zero() || tcp.reconnect_max < tcp.reconnect_min {
                err(
                    format!("{cpath}.reconnect_max"),
                    "reconnect_min must be > 0 and <= reconnect_max".into(),
                );
            }
            unit_check(&cpath, &tcp.devices, false, &mut err);
        }
        let mut paths = HashSet::new();
        for (b, bus) in self.rtu.iter().enumerate() {
            let bpath = format!("{path}.rtu[{b}]");
            if !paths.insert(&bus.path) {
                err(
                    format!("{bpath}.path"),
                    format!(
                        "{} is configured as two buses; put all its slaves on one",
                        bus.path.display()
                    ),
                );
            }
            if !(300..=921_600).contains(&bus.baud) {
                err(
                    format!("{bpath}.baud"),
                    format!("must be 300..=921600, got {}", bus.baud),
                );
            }
            if !matches!(bus.data_bits, 7 | 8) {
                err(
                    format!("{bpath}.data_bits"),
                    format!("must be 7 or 8, got {}", bus.data_bits),
                );
            }
            if !matches!(bus.stop_bits, 1 | 2) {
                err(
                    format!("{bpath}.stop_bits"),
                    format!("must be 1 or 2, got {}", bus.stop_bits),
                );
            }
            if bus.timeout < Duration::from_millis(1) {
                err(format!("{bpath}.timeout"), "must be at least 1ms".into());
            }
            unit_check(&bpath, &bus.devices, true, &mut err);
        }
    }
}

impl ModbusConfig {

    /// Every configured device, for profile binding.
    pub(crate) fn device_bindings(&self, path: &str) -> Vec<DeviceBinding> {
        let tcp = self.tcp.iter().enumerate().flat_map(|(c, t)| {
            t.devices
                .iter()
                .enumerate()
                .map(move |(d, dev)| (format!("{path}.tcp[{c}].devices[{d}]"), dev))
        });
        let rtu = self.rtu.iter().enumerate().flat_map(|(b, bus)| {
            bus.devices
                .iter()
                .enumerate()
                .map(move |(d, dev)| (format!("{path}.rtu[{b}].devices[{d}]"), dev))
        });
        tcp.chain(rtu)
            .map(|(key_path, dev)| DeviceBinding {
                device: dev.id.clone(),
                profile: dev.profile.clone(),
                key_path,
            })
            .collect()
    }
}

fn validate_map(mpath: &str, map: &RegisterMap, err: &mut dyn FnMut(String, String)) {
    if map.groups.is_empty() {
        err(
            format!("{mpath}.groups"),
            "a register map needs at least one poll group".into(),
        );
    }
    let mut names: HashMap<&str, String> = HashMap::new();
    // (area, first, end exclusive, bit or None, key) of every point, to find overlaps.
    let mut occupied: Vec<(Area, u32, u32, Option<u8>, String)> = Vec::new();
    for (g, group) in map.groups.iter().enumerate() {
        let gpath = format!("{mpath}.groups[{g}]");
        if group.interval < Duration::from_millis(1) {
            err(format!("{gpath}.interval"), "must be at least 1ms".into());
        }
        for (p, point) in group.points.iter().enumerate() {
            let key = format!("{gpath}.points[{p}]");
            let who = format!("point `{}`", point.name);
            if let Some(first) = names.insert(&point.name, key.clone()) {
                err(
                    format!("{key}.name"),
                    format!("{who} is also defined at {first}"),
                );
            }
            let bits = point.area.is_bits();
            match (point.ty, bits) {
                (DataType::Bool, false) => err(
                    format!("{key}.type"),
                    format!(
                        "{who}: bool is for coils and discrete inputs; a bit of a register is type = \"bit\""
                    ),
                ),
                (ty, true) if ty != DataType::Bool => err(
                    format!("{key}.type"),
                    format!(
                        "{who}: a {} reads bits, so its type is bool, not {}",
                        point.area.as_str(),
                        ty.as_str()
                    ),
                ),
                _ => {}
            }
            match (point.ty, point.bit) {
                (DataType::Bit, None) => err(
                    format!("{key}.bit"),
                    format!("{who}: type bit needs bit = 0..15"),
                ),
                (DataType::Bit, Some(b)) if b > 15 => {
                    err(format!("{key}.bit"), format!("{who}: bit {b} is not 0..15"))
                }
                (ty, Some(_)) if ty != DataType::Bit => err(
                    format!("{key}.bit"),
                    format!("{who}: bit only applies to type bit, not {}", ty.as_str()),
                ),
                _ => {}
            }
            match (point.ty, point.length) {
                (DataType::String, None) => err(
                    format!("{key}.length"),
                    format!("{who}: a string needs length (registers)"),
                ),
                (DataType::String, Some(l)) if l == 0 || l > MAX_READ_REGISTERS => err(
                    format!("{key}.length"),
                    format!("{who}: length must be 1..={MAX_READ_REGISTERS} registers, got {l}"),
                ),
                (DataType::String, Some(l)) if point.writable && l > MAX_WRITE_REGISTERS => err(
                    format!("{key}.length"),
                    format!(
                        "{who}: a writable string is at most {MAX_WRITE_REGISTERS} registers (one write multiple registers request), got {l}"
                    ),
                ),
                (ty, Some(_)) if ty != DataType::String => err(
                    format!("{key}.length"),
                    format!("{who}: length only applies to strings, not {}", ty.as_str()),
                ),
                _ => {}
            }
            let width = point.width().max(1);
            if let Some(count) = point.count
                && count != width
            {
                err(
                    format!("{key}.count"),
                    format!(
                        "{who}: a {} occupies {width} register(s), count says {count}",
                        point.ty.as_str()
                    ),
                );
            }
            let end = u32::from(point.address) + u32::from(width);
            if end > 65_536 {
                err(
                    format!("{key}.address"),
                    format!("{who}: address {} + {width} goes past 65535", point.address),
                );
            }
            if point.writable && !point.area.is_writable() {
                err(
                    format!("{key}.writable"),
                    format!("{who}: a {} is read-only", point.area.as_str()),
                );
            }
            if point.writable && point.ty == DataType::Bit {
                err(
                    format!("{key}.writable"),
                    format!(
                        "{who}: writing one bit of a register is not supported; map the register as u16 to write it"
                    ),
                );
            }
            if point.verify && !point.writable {
                err(
                    format!("{key}.verify"),
                    format!("{who}: verify applies to writable points"),
                );
            }
            if point.write_multiple && !point.writable {
                err(
                    format!("{key}.write_multiple"),
                    format!("{who}: write_multiple applies to writable points"),
                );
            }
            let bit = (point.ty == DataType::Bit).then_some(point.bit.unwrap_or(0));
            for (area, first, last, other_bit, other) in &occupied {
                let overlaps =
                    *area == point.area && u32::from(point.address) < *last && *first < end;
                // Several bit points may share a register, one bit each.
                let shared_bits = bit.is_some()
                    && other_bit.is_some()
                    && bit != *other_bit
                    && end - u32::from(point.address) == 1
                    && last - first == 1;
                if overlaps && !shared_bits {
                    err(
                        format!("{key}.address"),
                        format!("{who} overlaps the point at {other}"),
                    );
                    break;
                }
            }
            occupied.push((point.area, u32::from(point.address), end, bit, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<(String, String)> {
        let config: ModbusConfig = toml::from_str(text).expect("parses");
        let mut errors = Vec::new();
        config.validate("modbus", &mut errors);
        errors.into_iter().map(|e| (e.key_path, e.reason)).collect()
    }

    const GOOD: &str = r#"
[[tcp]]
address = "127.0.0.1:5020"
devices = [{ id = "press-1", unit = 1, map = "press" }, { id = "press-2", unit = 2, map = "press", profile = "press" }]

[maps.press]
max_gap = 4
[[maps.press.groups]]
name = "fast"
interval = "100ms"
points = [
  { name = "temperature", area = "holding_register", address = 0, type = "f32", order = "CDAB", count = 2 },
  { name = "alarm_low", area = "holding_register", address = 10, type = "bit", bit = 0 },
  { name = "alarm_high", area = "holding_register", address = 10, type = "bit", bit = 1 },
  { name = "setpoint", area = "holding_register", address = 11, type = "u16", writable = true, verify = true },
  { name = "running", area = "coil", address = 0, type = "bool", writable = true },
]
[[maps.press.groups]]
name = "slow"
interval = "10s"
points = [{ name = "serial", area = "input_register", address = 100, type = "string", length = 8 }]
"#;

    #[test]
    fn a_real_world_map_is_valid_and_binds_its_devices() {
        assert_eq!(errors(GOOD), Vec::<(String, String)>::new());
        let config: ModbusConfig = toml::from_str(GOOD).expect("parses");
        let devices: Vec<(String, Option<String>)> = config
            .device_bindings("modbus")
            .into_iter()
            .map(|b| (b.device, b.profile))
            .collect();
        assert_eq!(
            devices,
            [
                ("press-1".into(), None),
                ("press-2".into(), Some("press".into()))
            ]
        );
    }

    #[test]
    fn impossible_points_are_rejected_with_device_point_and_reason() {
        let found = errors(
            r#"
[[rtu]]
path = "/dev/ttyS0"
stop_bits = 3
devices = [{ id = "a", unit = 0, map = "m" }, { id = "b", unit = 5, map = "nope" }, { id = "c", unit = 5, map = "m" }]

[maps.m]
[[maps.m.groups]]
name = "g"
points = [
  { name = "t", area = "holding_register", address = 0, type = "f32", count = 1 },
  { name = "u", area = "holding_register", address = 1, type = "u16" },
  { name = "flag", area = "input_register", address = 5, type = "bool" },
  { name = "c", area = "coil", address = 0, type = "u16" },
  { name = "b", area = "holding_register", address = 9, type = "bit" },
  { name = "s", area = "holding_register", address = 20, type = "string" },
  { name = "w", area = "input_register", address = 30, type = "u16", writable = true },
  { name = "end", area = "holding_register", address = 65535, type = "u32" },
  { name = "u", area = "holding_register", address = 40, type = "u16" },
  { name = "long", area = "holding_register", address = 100, type = "string", length = 124, writable = true },
]
"#,
        );
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "modbus.maps.m.groups[0].points[0].count",
                "modbus.maps.m.groups[0].points[1].address",
                "modbus.maps.m.groups[0].points[2].type",
                "modbus.maps.m.groups[0].points[3].type",
                "modbus.maps.m.groups[0].points[4].bit",
                "modbus.maps.m.groups[0].points[5].length",
                "modbus.maps.m.groups[0].points[6].writable",
                "modbus.maps.m.groups[0].points[7].address",
                "modbus.maps.m.groups[0].points[8].name",
                "modbus.maps.m.groups[0].points[9].length",
                "modbus.rtu[0].stop_bits",
                "modbus.rtu[0].devices[0].unit",
                "modbus.rtu[0].devices[1].map",
                "modbus.rtu[0].devices[2].unit",
            ]
        );
        let reason = |k: &str| {
            found
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, r)| r.as_str())
                .unwrap_or("")
        };
        assert_eq!(
            reason("modbus.maps.m.groups[0].points[0].count"),
            "point `t`: a f32 occupies 2 register(s), count says 1"
        );
        assert_eq!(
            reason("modbus.maps.m.groups[0].points[1].address"),
            "point `u` overlaps the point at modbus.maps.m.groups[0].points[0]"
        );
        assert!(
            reason("modbus.rtu[0].devices[1].map").contains("`nope` is not defined (defined: m)")
        );
    }

    #[test]
    fn unknown_serial_settings_are_rejected_by_name() {
        let bad: Result<ModbusConfig, _> =
            toml::from_str("[[rtu]]\npath = \"/dev/ttyS0\"\nparity = \"mark\"\ndevices = []\n");
        let e = bad.expect_err("unknown parity").to_string();
        assert!(
            e.contains("mark") && e.contains("none") && e.contains("even"),
            "{e}"
        );
        let bad: Result<ModbusConfig, _> = toml::from_str(
            "[[rtu]]\npath = \"/dev/ttyS0\"\nflow_control = \"rts\"\ndevices = []\n",
        );
        assert!(
            bad.expect_err("unknown key")
                .to_string()
                .contains("flow_control")
        );
    }
}
