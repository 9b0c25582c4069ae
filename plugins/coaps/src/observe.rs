//! Who observes the last readings (RFC 7641): the clients registered on
//! `/{path}/{device}[/{sensor}]`, shared by the ingress's workers. When a device's readings are
//! taken in, each of its observers is sent the resource's new state through the worker that
//! holds the observer's session (a [`Responder`]); the CoAP endpoint there numbers it and picks
//! NON or CON. Bounded in observers, in all and per peer. No I/O of its own.

use crate::latest::{self, Latest};
use gateway_coap::{
    coap_lite::{CoapOption, Packet, ResponseType},
    decode_uint, encode_uint, response, Token,
};
use gateway_coaps_tokio::Responder;
use gateway_sdk::Reading;
use std::{collections::HashMap, net::SocketAddr};

/// Most observations one peer (one DTLS session) may hold.
pub const PER_PEER: usize = 8;

/// One registered client.
struct Watcher {
    peer: SocketAddr,
    token: Token,
    sensor: Option<String>,
    /// The Accept option of its registration, if any, in its shortest form: each
    /// notification is encoded as the registration's answer was, once for all the watchers
    /// of one state that asked for the same format however they wrote it.
    accept: Option<Vec<u8>>,
    to: Responder,
    /// The round of the last state it was handed (see [`Observers::deliver`]).
    delivered: u64,
}

/// The registry.
pub struct Observers {
    /// Each device's observers, by (peer, token).
    by_device: HashMap<String, HashMap<(SocketAddr, Token), Watcher>>,
    /// Where each registration is, by (peer, token).
    device_of: HashMap<(SocketAddr, Token), String>,
    per_peer: HashMap<SocketAddr, usize>,
    max: usize,
    /// The last [`Observers::plan`]'s round: each plan takes the next, so that
    /// [`Observers::deliver`] never hands an observer a state older than one it was handed.
    round: u64,
    /// Notifications handed to the workers.
    pub sent: u64,
}

/// The notifications [`Observers::plan`] found due, with the readings each state is made of:
/// encoded by [`Notices::encode`] without the locks held (a state can be hundreds of KB of
/// JSON), then handed over by [`Observers::deliver`].
pub struct Notices {
    /// The plan's round (see [`Observers::deliver`]).
    round: u64,
    jobs: Vec<Job>,
}

/// One state to send: one device, sensor (or all) and Accept, to its observers.
struct Job {
    device: String,
    sensor: Option<String>,
    accept: Option<Vec<u8>>,
    readings: Option<Vec<Reading>>,
    packet: Option<Packet>,
    to: Vec<(SocketAddr, Token)>,
}

impl Notices {
    /// Encodes each state (no lock needed: the readings are a copy).
    pub fn encode(&mut self, max_block: usize) {
        for job in &mut self.jobs {
            job.packet = job
                .readings
                .take()
                .and_then(|r| state(&r, job.accept.as_deref(), max_block));
        }
    }
}

impl Observers {
    /// A registry of at most `max` observers.
    pub fn new(max: usize) -> Observers {
        Observers {
            by_device: HashMap::new(),
            device_of: HashMap::new(),
            per_peer: HashMap::new(),
            max,
            round: 0,
            sent: 0,
        }
    }

    /// Observers registered now.
    pub fn len(&self) -> usize {
        self.device_of.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.device_of.is_empty()
    }

    /// Registers the client that sent `req` (a GET with `Observe: 0`) from `peer`, to be
    /// notified through `to`. `false` when the registry (or the peer's share) is full: the
    /// answer then goes without an Observe option, which tells the client it is not registered.
    pub fn add(
        &mut self,
        device: &str,
        sensor: Option<&str>,
        peer: SocketAddr,
        req: &Packet,
        to: &Responder,
    ) -> bool {
        let token = req.get_token().to_vec();
        let again = self.device_of.contains_key(&(peer, token.clone()));
        if again {
            // The same token registers again: the newer registration replaces the older.
            self.remove(peer, &token);
        }
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        if self.len() >= self.max || mine >= PER_PEER {
            return false;
        }
        *self.per_peer.entry(peer).or_default() += 1;
        self.device_of
            .insert((peer, token.clone()), device.to_owned());
        self.by_device.entry(device.to_owned()).or_default().insert(
            (peer, token.clone()),
            Watcher {
                peer,
                token,
                sensor: sensor.map(str::to_owned),
                accept: req
                    .get_first_option(CoapOption::Accept)
                    .map(|a| decode_uint(a).map_or_else(|| a.clone(), encode_uint)),
                to: to.clone(),
                // Nothing planned before it registered: its answer is newer.
                delivered: self.round,
            },
        );
        true
    }

    /// Forgets a registration (the client went, or said so).
    pub fn remove(&mut self, peer: SocketAddr, token: &[u8]) {
        let Some(device) = self.device_of.remove(&(peer, token.to_vec())) else {
            return;
        };
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        if let Some(ws) = self.by_device.get_mut(&device) {
            ws.remove(&(peer, token.to_vec()));
            if ws.is_empty() {
                self.by_device.remove(&device);
            }
        }
    }

    /// The notifications `fresh` readings make due: the devices and sensors they touched, one
    /// state per distinct (sensor, Accept) however many observe it, with its readings copied
    /// from `table`. Call it under the table's lock, right after recording `fresh`, so that a
    /// state is never older than a registration's answer that went before it.
    pub fn plan(&mut self, fresh: &[Reading], table: &Latest) -> Notices {
        let mut jobs = Vec::new();
        if self.by_device.is_empty() {
            return Notices {
                round: self.round,
                jobs,
            };
        }
        self.round += 1;
        let mut touched: Vec<(&str, &str)> = fresh
            .iter()
            .map(|r| (r.device.as_str(), r.sensor.as_str()))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut devices: Vec<&str> = touched.iter().map(|(d, _)| *d).collect();
        devices.dedup();
        for device in devices {
            let Some(watchers) = self.by_device.get(device) else {
                continue;
            };
            let first = jobs.len();
            for w in watchers.values() {
                let sensor = w.sensor.as_deref();
                if sensor.is_some_and(|s| !touched.contains(&(device, s))) {
                    continue;
                }
                let i = match jobs[first..]
                    .iter()
                    .position(|j: &Job| j.accept == w.accept && j.sensor.as_deref() == sensor)
                {
                    Some(i) => first + i,
                    None => {
                        jobs.push(Job {
                            device: device.to_owned(),
                            sensor: sensor.map(str::to_owned),
                            accept: w.accept.clone(),
                            readings: table.get(device, sensor),
                            packet: None,
                            to: Vec::new(),
                        });
                        jobs.len() - 1
                    }
                };
                jobs[i].to.push((w.peer, w.token.clone()));
            }
        }
        Notices {
            round: self.round,
            jobs,
        }
    }

    /// Hands the encoded `notices` to the workers of their observers: to each observer still
    /// registered as it was planned for, unless it was handed a newer state meanwhile (a
    /// worker that encoded an older state after another's newer one leaves it).
    pub fn deliver(&mut self, notices: Notices) {
        let (mut sent, round) = (0, notices.round);
        for job in notices.jobs {
            let Some(packet) = job.packet else {
                continue;
            };
            let Some(watchers) = self.by_device.get_mut(&job.device) else {
                continue;
            };
            for key in job.to {
                let Some(w) = watchers.get_mut(&key) else {
                    continue;
                };
                if w.delivered >= round || w.sensor != job.sensor || w.accept != job.accept {
                    continue;
                }
                w.delivered = round;
                w.to.notify(w.peer, w.token.clone(), packet.clone());
                sent += 1;
            }
        }
        self.sent += sent;
    }

    /// Tells the observers of `device` it is gone (a 4.04, which ends each observation), and
    /// forgets them.
    pub fn forgotten(&mut self, device: &str) {
        for w in self
            .by_device
            .remove(device)
            .unwrap_or_default()
            .into_values()
        {
            let gone = response(ResponseType::NotFound, &format!("{device} was forgotten"));
            w.to.notify(w.peer, w.token.clone(), gone);
            self.device_of.remove(&(w.peer, w.token));
            if let Some(n) = self.per_peer.get_mut(&w.peer) {
                *n -= 1;
                if *n == 0 {
                    self.per_peer.remove(&w.peer);
                }
            }
        }
    }
}

/// A resource's state (its `readings`) as a notification: what a GET with `accept` would
/// answer, its first block if it is large. `None` if there is nothing to say (a format the
/// registration's answer could not have had).
fn state(readings: &[Reading], accept: Option<&[u8]>, max_block: usize) -> Option<Packet> {
    let mut get = Packet::new();
    if let Some(a) = accept {
        get.add_option(CoapOption::Accept, a.to_vec());
    }
    let mut p = latest::answer(&get, readings, max_block).ok()?;
    p.add_option(CoapOption::Observe, encode_uint(0));
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_coap::{coap_lite::RequestType, request};
    use gateway_sdk::{Label, ReadingId, Timestamp, Value};

    fn get(token: u8) -> Packet {
        let mut p = request(RequestType::Get, "gpsflowtemp/pi-1", None, Vec::new());
        p.set_token(vec![token]);
        p
    }

    fn reading(device: &str, sensor: &str) -> Reading {
        Reading {
            id: ReadingId([1; 16]),
            time: Timestamp(1),
            device: Label::from(device),
            sensor: Label::from(sensor),
            name: Label::from("temperature"),
            unit: Label::from("Cel"),
            value: Value::Float(21.5),
        }
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    impl Observers {
        /// Plan, encode and deliver in one, as a worker does.
        fn notify(&mut self, fresh: &[Reading], table: &Latest, max_block: usize) {
            let mut notices = self.plan(fresh, table);
            notices.encode(max_block);
            self.deliver(notices);
        }
    }

    #[test]
    fn bounded_in_all_and_per_peer() {
        let to = Responder::detached();
        let mut o = Observers::new(10);
        for t in 0..PER_PEER as u8 {
            assert!(o.add("pi-1", None, peer(1), &get(t), &to));
        }
        assert!(
            !o.add("pi-1", None, peer(1), &get(99), &to),
            "the peer's share is full"
        );
        // The same token again replaces its registration, within the share.
        assert!(o.add("pi-1", Some("probe"), peer(1), &get(0), &to));
        assert_eq!(o.len(), PER_PEER);
        assert!(o.add("pi-2", None, peer(2), &get(0), &to));
        assert!(o.add("pi-2", None, peer(3), &get(0), &to));
        assert!(!o.add("pi-2", None, peer(4), &get(0), &to), "10 in all");
        o.remove(peer(1), &[3]);
        assert!(o.add("pi-2", None, peer(4), &get(0), &to));
        assert_eq!(o.len(), 10);
    }

    #[test]
    fn notifies_the_observers_of_what_changed_only() {
        let to = Responder::detached();
        let mut o = Observers::new(100);
        o.add("pi-1", None, peer(1), &get(1), &to);
        o.add("pi-1", Some("probe"), peer(2), &get(1), &to);
        o.add("pi-1", Some("gps"), peer(3), &get(1), &to);
        o.add("pi-2", None, peer(4), &get(1), &to);
        let mut table = Latest::new(10, 10, 1 << 20);
        let fresh = [reading("pi-1", "probe"), reading("pi-1", "probe")];
        table.record(&fresh);
        o.notify(&fresh, &table, 1024);
        assert_eq!(
            o.sent, 2,
            "the device's observer and the probe's, once each"
        );
        o.forgotten("pi-1");
        assert_eq!(o.len(), 1);
        o.notify(&fresh, &table, 1024);
        assert_eq!(o.sent, 2);
    }

    #[test]
    fn one_format_written_two_ways_is_encoded_once() {
        // Accept 110 as one byte and as two (a leading zero): one state, one encoding.
        let to = Responder::detached();
        let mut o = Observers::new(100);
        for (port, accept) in [(1, vec![110]), (2, vec![0, 110]), (3, vec![112])] {
            let mut g = get(1);
            g.add_option(CoapOption::Accept, accept);
            assert!(o.add("pi-1", None, peer(port), &g, &to));
        }
        let mut table = Latest::new(10, 10, 1 << 20);
        let fresh = [reading("pi-1", "probe")];
        table.record(&fresh);
        let notices = o.plan(&fresh, &table);
        assert_eq!(notices.jobs.len(), 2, "SenML JSON once, SenML CBOR once");
        assert_eq!(notices.jobs.iter().map(|j| j.to.len()).sum::<usize>(), 3);
    }

    #[test]
    fn a_state_encoded_after_a_newer_one_is_not_sent_and_none_is_lost() {
        // Workers encode states without the locks: two requests' states may be ready in the
        // other order. Each observer gets the newest state planned for it, once.
        let to = Responder::detached();
        let mut o = Observers::new(100);
        o.add("pi-1", None, peer(1), &get(1), &to);
        o.add("pi-1", Some("probe"), peer(2), &get(1), &to);
        o.add("pi-1", Some("gps"), peer(3), &get(1), &to);
        let mut table = Latest::new(10, 10, 1 << 20);
        let (probe, gps) = ([reading("pi-1", "probe")], [reading("pi-1", "gps")]);
        table.record(&probe);
        let mut older = o.plan(&probe, &table);
        table.record(&gps);
        let mut newer = o.plan(&gps, &table);
        newer.encode(1024);
        o.deliver(newer);
        assert_eq!(o.sent, 2, "the device's observer and the gps one");
        older.encode(1024);
        o.deliver(older);
        // The probe's observer had no newer state: it gets this one. The device's observer
        // got a newer one already.
        assert_eq!(o.sent, 3);
        // An observer gone meanwhile is not sent the state planned for it, nor one that
        // registered again with its token after the plan (its answer was newer).
        let mut later = o.plan(&probe, &table);
        o.remove(peer(2), &[1]);
        o.remove(peer(1), &[1]);
        o.add("pi-1", None, peer(1), &get(1), &to);
        later.encode(1024);
        o.deliver(later);
        assert_eq!(o.sent, 3);
    }
}
