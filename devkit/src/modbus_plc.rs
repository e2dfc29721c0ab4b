//! A simulated PLC: a Modbus TCP server (tokio-modbus's server, not ours)
//! whose registers change with time. The demo serves one in-process so it
//! can show Modbus next to the sim devices, and the benchmark polls one as
//! fast as it answers. It runs on its own thread (`plc-simulator`) so its
//! CPU time can be told apart from the gateway's.
//!
//! Every unit id in `units` has `registers` holding registers and as many
//! input registers, coils and discrete inputs. Holding register `a` of
//! unit `u` reads `u * 1000 + a + t`, where `t` counts tenths of seconds
//! since start (so values move and every register differs); input
//! register `a` holds `f32` pairs of a sine with period 20 s (CDAB-free,
//! big-endian); coil `a` toggles every second. Holding registers and
//! coils can be written (function codes 5, 6, 15, 16), like a PLC's
//! setpoints: a written one keeps its value from then on. Beyond
//! `registers` the server answers "illegal data address"; unknown units
//! get "gateway target device failed to respond".

use std::collections::HashMap;
use std::future;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Written holding registers and coils (as 0/1), by (unit, coil?, address).
type Written = HashMap<(u8, bool, u16), u16>;

#[derive(Clone)]
struct Plc {
    units: RangeInclusive<u8>,
    registers: u16,
    started: Instant,
    requests: Arc<AtomicU64>,
    values_read: Arc<AtomicU64>,
    written: Arc<Mutex<Written>>,
    /// Fast path for reads: nothing was ever written.
    any_written: Arc<AtomicBool>,
}

impl Plc {
    fn tick(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 / 100
    }

    fn written(&self, unit: u8, coil: bool, addr: u16) -> Option<u16> {
        if !self.any_written.load(Ordering::Relaxed) {
            return None;
        }
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.get(&(unit, coil, addr)).copied()
    }

    fn holding(&self, unit: u8, addr: u16) -> u16 {
        self.written(unit, false, addr)
            .unwrap_or((u64::from(unit) * 1000 + u64::from(addr) + self.tick()) as u16)
    }

    fn write(&self, unit: u8, coil: bool, addr: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let count = u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
        let range = self.range(addr, count)?;
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        for (a, v) in range.zip(values) {
            written.insert((unit, coil, a), *v);
        }
        self.any_written.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn input(&self, unit: u8, addr: u16) -> u16 {
        let seconds = self.started.elapsed().as_secs_f64();
        let value = (f64::from(unit)
            + 10.0 * (std::f64::consts::TAU * seconds / 20.0 + f64::from(addr / 2)).sin())
            as f32;
        let [a, b, c, d] = value.to_be_bytes();
        if addr.is_multiple_of(2) {
            u16::from_be_bytes([a, b])
        } else {
            u16::from_be_bytes([c, d])
        }
    }

    fn coil(&self, unit: u8, addr: u16) -> bool {
        match self.written(unit, true, addr) {
            Some(v) => v != 0,
            None => (self.started.elapsed().as_secs() + u64::from(addr)).is_multiple_of(2),
        }
    }

    fn range(&self, addr: u16, count: u16) -> Result<std::ops::Range<u16>, ExceptionCode> {
        let end = u32::from(addr) + u32::from(count);
        if count == 0 || end > u32::from(self.registers) {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        Ok(addr..end as u16)
    }

    fn answer(&self, unit: u8, request: Request<'static>) -> Result<Response, ExceptionCode> {
        if !self.units.contains(&unit) {
            return Err(ExceptionCode::GatewayTargetDevice);
        }
        match request {
            Request::ReadHoldingRegisters(addr, count) => Ok(Response::ReadHoldingRegisters(
                self.range(addr, count)?
                    .map(|a| self.holding(unit, a))
                    .collect(),
            )),
            Request::ReadInputRegisters(addr, count) => Ok(Response::ReadInputRegisters(
                self.range(addr, count)?
                    .map(|a| self.input(unit, a))
                    .collect(),
            )),
            Request::ReadCoils(addr, count) => Ok(Response::ReadCoils(
                self.range(addr, count)?
                    .map(|a| self.coil(unit, a))
                    .collect(),
            )),
            Request::ReadDiscreteInputs(addr, count) => Ok(Response::ReadDiscreteInputs(
                self.range(addr, count)?
                    .map(|a| (self.started.elapsed().as_secs() + u64::from(a)) % 2 == 1)
                    .collect(),
            )),
            Request::WriteSingleRegister(addr, value) => self
                .write(unit, false, addr, &[value])
                .map(|()| Response::WriteSingleRegister(addr, value)),
            Request::WriteMultipleRegisters(addr, values) => self
                .write(unit, false, addr, &values)
                .map(|()| Response::WriteMultipleRegisters(addr, values.len() as u16)),
            Request::WriteSingleCoil(addr, on) => self
                .write(unit, true, addr, &[u16::from(on)])
                .map(|()| Response::WriteSingleCoil(addr, on)),
            Request::WriteMultipleCoils(addr, bits) => {
                let values: Vec<u16> = bits.iter().map(|b| u16::from(*b)).collect();
                self.write(unit, true, addr, &values)
                    .map(|()| Response::WriteMultipleCoils(addr, values.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl tokio_modbus::server::Service for Plc {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let answer = self.answer(req.slave, req.request);
        let read = match &answer {
            Ok(Response::ReadHoldingRegisters(v) | Response::ReadInputRegisters(v)) => v.len(),
            Ok(Response::ReadCoils(v) | Response::ReadDiscreteInputs(v)) => v.len(),
            _ => 0,
        };
        self.values_read.fetch_add(read as u64, Ordering::Relaxed);
        future::ready(answer)
    }
}

/// A running simulated PLC; dropping it does not stop it (it ends with
/// the process), which is what the demo and the benchmark need.
pub struct SimulatedPlc {
    pub address: SocketAddr,
    /// Requests answered so far (for the benchmark's requests per cycle).
    pub requests: Arc<AtomicU64>,
    /// Registers and bits returned by reads so far (the benchmark's cycles).
    pub values_read: Arc<AtomicU64>,
}

impl SimulatedPlc {
    /// Starts serving on `127.0.0.1` (a free port) on its own thread.
    pub fn start(units: RangeInclusive<u8>, registers: u16) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        std_listener.set_nonblocking(true)?;
        let address = std_listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let values_read = Arc::new(AtomicU64::new(0));
        let plc = Plc {
            units,
            registers,
            started: Instant::now(),
            requests: requests.clone(),
            values_read: values_read.clone(),
            written: Arc::default(),
            any_written: Arc::default(),
        };
        biota_common::thread::spawn_on_own_runtime("plc-simulator", move || async move {
            let listener = match TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for the simulated PLC");
                    return;
                }
            };
            let server = Server::new(listener);
            let on_connected = |stream, addr| {
                let plc = plc.clone();
                async move { accept_tcp_connection(stream, addr, move |_| Ok(Some(plc.clone()))) }
            };
            if let Err(e) = server
                .serve(
                    &on_connected,
                    |e| tracing::debug!(error = %e, "simulated PLC connection ended"),
                )
                .await
            {
                tracing::error!(error = %e, "the simulated PLC stopped");
            }
        })?;
        Ok(Self {
            address,
            requests,
            values_read,
        })
    }
}
