//! The BIOTA Edge gateway's developer and test kit: what the demo, the
//! benchmarks and the tests run against the gateway, never flashed to one.
//!
//! | module | what |
//! |---|---|
//! | [`modbus_plc`] | a simulated PLC: a Modbus TCP server (tokio-modbus) on its own thread |
//! | [`mqtt_devices`] | simulated devices publishing JSON and SenML to a broker (rumqttc) |
//! | [`coap_sensor`] | a simulated sensor posting SenML packs over CoAP, confirmable |
//! | [`http_client`] | a small HTTP/1.1 client for the gateway's API (hyper) |
//! | [`peers`] | launchers of third-party peers the tools compare with (Mosquitto, anvil) |
//!
//! *Architecture invariant:* depends on `biota-common` only among the
//! workspace's crates, so the gateway's own tests can use it.

pub mod coap_sensor;
pub mod http_client;
pub mod modbus_plc;
pub mod mqtt_devices;
pub mod peers;
