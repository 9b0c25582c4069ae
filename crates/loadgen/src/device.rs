//! One simulated device: `gateway-dtls`'s client state machine pumped from its own UDP socket
//! on a task of the load generator's runtime (the same loop as `gateway-coaps-tokio`'s client
//! driver, without its thread and command channel, so that thousands of devices fit on a few
//! threads).

use crate::payload::Payload;
use gateway_coap::{
    coap_lite::{Packet, RequestType},
    request, Code, ContentFormat,
};
use gateway_coaps_tokio::carry_out;
use gateway_dtls::client::{Client, Config, Event, RequestError};
use gateway_sdk::{IdGenerator, Label, Reading, ReadingId, Timestamp, Value};
use openssl::ssl::SslContext;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{net::UdpSocket, time::sleep_until};

/// The sensor every reading is of.
pub const SENSOR: &str = "load";

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    /// A 2.xx answer.
    Stored,
    /// Another answer: its code (e.g. "5.03") and payload (the server's reason, if it gave one).
    Refused(String, String),
    /// No answer within the timeout.
    Timeout,
    /// The DTLS session could not be set up.
    Handshake(String),
    /// Anything else (socket, CoAP reset, ...).
    Failed(String),
}

/// A device: its state machine, its socket, and the readings it sends.
pub struct Device {
    machine: Client,
    server: SocketAddr,
    socket: Option<UdpSocket>,
    buf: Vec<u8>,
    name: Label,
    /// The readings of a POST, made once and given new ids, times and values for each: a
    /// reading costs the load generator as little as it can, so that its CPU goes to the
    /// exchange.
    batch: Vec<Reading>,
    /// The last POST's payload, rewritten for the next.
    payload: Payload,
    ids: IdGenerator,
    path: String,
    timeout: Duration,
    /// Notifications that came while pumping: (arrival, packet).
    notifications: std::collections::VecDeque<(Instant, Packet)>,
    /// Until when the last answer asked the device not to send (a 5.03's or 4.29's Max-Age).
    paused_until: Option<Instant>,
}

impl Device {
    /// A device named `name` (its SenML device name), talking to `server`.
    pub fn new(
        cfg: Config,
        ctx: SslContext,
        server: SocketAddr,
        name: &str,
        readings: usize,
        path: &str,
        timeout: Duration,
    ) -> Device {
        let [device, sensor, measurement, unit] =
            [name, SENSOR, "temperature", "Cel"].map(Label::from);
        let batch = (0..readings)
            .map(|_| Reading {
                id: ReadingId([0; 16]),
                time: Timestamp(0),
                device: device.clone(),
                sensor: sensor.clone(),
                name: measurement.clone(),
                unit: unit.clone(),
                value: Value::Float(0.0),
            })
            .collect();
        Device {
            machine: Client::with_context(cfg, ctx, gateway_dtls::rng()),
            server,
            socket: None,
            buf: vec![0; 65536],
            name: device,
            batch,
            payload: Payload::default(),
            ids: IdGenerator::new(),
            path: path.to_owned(),
            timeout,
            notifications: std::collections::VecDeque::new(),
            paused_until: None,
        }
    }

    /// Whether the device has a DTLS session now.
    pub fn is_connected(&self) -> bool {
        self.machine.is_connected()
    }

    /// One CON POST of fresh readings (new ids, so that the server stores them, not drops them
    /// as repeats), waited for.
    pub async fn post(&mut self) -> Outcome {
        self.post_values(|i| 20.0 + i as f64 / 10.0).await
    }

    /// [`Device::post`] with reading `i`'s value `value(i)`.
    pub async fn post_values(&mut self, value: impl Fn(usize) -> f64) -> Outcome {
        let now = Timestamp::now();
        for (i, r) in self.batch.iter_mut().enumerate() {
            r.id = self.ids.next(now);
            r.time = now;
            r.value = Value::Float(value(i));
        }
        let payload = self.payload.encode(&self.batch);
        let packet = request(
            RequestType::Post,
            &self.path,
            Some(ContentFormat::SENML_CBOR),
            payload,
        );
        self.outcome(packet).await
    }

    /// One CON GET of the device's own last readings (`PATH/NAME`), waited for.
    pub async fn get(&mut self) -> Outcome {
        let path = format!("{}/{}", self.path, self.name);
        self.outcome(request(RequestType::Get, &path, None, Vec::new()))
            .await
    }

    /// Registers for the notifications of `PATH/DEVICE/SENSOR` (a GET with `Observe: 0`).
    /// `Stored` if the server registered it (its answer carries an Observe option).
    pub async fn observe(&mut self, device: &str) -> Outcome {
        let path = format!("{}/{device}/{SENSOR}", self.path);
        let mut get = request(RequestType::Get, &path, None, Vec::new());
        get.add_option(gateway_coap::coap_lite::CoapOption::Observe, Vec::new());
        get.add_option(
            gateway_coap::coap_lite::CoapOption::Accept,
            gateway_coap::encode_uint(u32::from(ContentFormat::SENML_CBOR.0)),
        );
        match self.call(get).await {
            Ok(p) if gateway_coap::observe_of(&p).is_none() => Outcome::Refused(
                Code::of(&p).map_or("?".into(), |c| c.to_string()),
                "not registered".into(),
            ),
            r => sorted(r),
        }
    }

    /// The next notification and when it arrived, waiting until `until` at most.
    pub async fn notification(&mut self, until: Instant) -> Option<(Instant, Packet)> {
        loop {
            let _ = self.pump(None).await;
            if let Some(n) = self.notifications.pop_front() {
                return Some(n);
            }
            if Instant::now() >= until {
                return None;
            }
            let _ = tokio::time::timeout_at(until.into(), self.wait()).await;
        }
    }

    /// Until when the server's last answer asked the device not to send again (the Max-Age of
    /// a 5.03 Service Unavailable or 4.29 Too Many Requests), if it did; asked once.
    pub fn take_pause(&mut self) -> Option<Instant> {
        self.paused_until.take()
    }

    /// Sends `packet` and sorts its answer.
    async fn outcome(&mut self, packet: Packet) -> Outcome {
        let r = self.call(packet).await;
        self.paused_until = r
            .as_ref()
            .ok()
            .and_then(gateway_coap::retry_after)
            .map(|d| Instant::now() + d);
        sorted(r)
    }

    /// Sends a close_notify and waits (briefly) for the machine to finish.
    pub async fn close(mut self) {
        self.machine.close(Instant::now());
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            // What the machine queued goes out before the closed machine is left: its last
            // datagram is the close_notify.
            loop {
                if self.pump(None).await.is_some() {
                    continue;
                }
                if self.machine.is_closed() {
                    break;
                }
                self.wait().await;
            }
        })
        .await;
    }

    /// Sends `packet` and pumps the machine until its answer (or failure) comes.
    async fn call(&mut self, packet: Packet) -> Result<Packet, RequestError> {
        let tag = self.machine.request(Instant::now(), packet, self.timeout);
        loop {
            if let Some(r) = self.pump(Some(tag)).await {
                return r;
            }
            self.wait().await;
        }
    }

    /// Delivers what the machine queued: the result of request `tag` if it finished, after
    /// sending every datagram queued before it.
    async fn pump(&mut self, tag: Option<u64>) -> Option<Result<Packet, RequestError>> {
        let mut done = None;
        loop {
            while let Some(ev) = self.machine.poll_event() {
                match ev {
                    Event::Done { tag: t, result } if Some(t) == tag => done = Some(result),
                    Event::Notification { packet, .. } => {
                        self.notifications.push_back((Instant::now(), packet))
                    }
                    _ => {}
                }
            }
            let Some(t) = self.machine.poll_transmit() else {
                return done;
            };
            carry_out(
                t,
                &mut self.socket,
                &mut self.machine,
                any(self.server),
                self.server,
            )
            .await;
        }
    }

    /// Waits for a datagram or the machine's next timer, and hands it over.
    async fn wait(&mut self) {
        let now = Instant::now();
        let next = self
            .machine
            .poll_timeout(now)
            .unwrap_or(now + Duration::from_secs(3600));
        let Device {
            socket,
            buf,
            machine,
            ..
        } = self;
        match socket {
            Some(s) => tokio::select! {
                r = s.recv(buf) => if let Ok(n) = r {
                    machine.handle(Instant::now(), &buf[..n]);
                },
                _ = sleep_until(next.into()) => machine.handle_timeout(Instant::now()),
            },
            None => {
                sleep_until(next.into()).await;
                machine.handle_timeout(Instant::now());
            }
        }
    }
}

/// How a request ended, from its answer or error.
fn sorted(r: Result<Packet, RequestError>) -> Outcome {
    match r {
        Ok(resp) => match Code::of(&resp) {
            Some(c) if c.is_success() => Outcome::Stored,
            Some(c) => {
                let why = String::from_utf8_lossy(&resp.payload);
                let why: String = why.chars().take(60).collect();
                Outcome::Refused(c.to_string(), why)
            }
            None => Outcome::Refused("?".into(), String::new()),
        },
        Err(RequestError::Timeout(_)) => Outcome::Timeout,
        Err(RequestError::Dtls(e)) => Outcome::Handshake(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The any-address of `server`'s family: each device binds a port of its own.
fn any(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    }
}
