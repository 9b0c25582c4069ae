//! Who observes the last readings (RFC 7641): the clients registered on
//! `/{path}/{device}[/{sensor}]`, shared by the ingress's workers. When a device's readings are
//! taken in, each of its observers is sent the resource's new state through the worker that
//! holds the observer's session (a [`Responder`]); the CoAP endpoint there numbers it and picks
//! NON or CON. Bounded in observers, in all and per peer. No I/O of its own.

use crate::latest::{self, Latest};
use gateway_coap::{
    coap_lite::{CoapOption, Packet, ResponseType},
    encode_uint, response, Token,
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
    /// The Accept option of its registration, if any: each notification is encoded as the
    /// registration's answer was.
    accept: Option<Vec<u8>>,
    to: Responder,
}

/// The registry.
pub struct Observers {
    /// Each device's observers, by (peer, token).
    by_device: HashMap<String, HashMap<(SocketAddr, Token), Watcher>>,
    /// Where each registration is, by (peer, token).
    device_of: HashMap<(SocketAddr, Token), String>,
    per_peer: HashMap<SocketAddr, usize>,
    max: usize,
    /// Notifications handed to the workers.
    pub sent: u64,
}

impl Observers {
    /// A registry of at most `max` observers.
    pub fn new(max: usize) -> Observers {
        Observers {
            by_device: HashMap::new(),
            device_of: HashMap::new(),
            per_peer: HashMap::new(),
            max,
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
                accept: req.get_first_option(CoapOption::Accept).cloned(),
                to: to.clone(),
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

    /// Notifies the observers of the devices and sensors `fresh` readings touched with their
    /// resource's new state from `table`. One encoding per distinct (sensor, Accept), however
    /// many observe it.
    pub fn notify(&mut self, fresh: &[Reading], table: &Latest, max_block: usize) {
        if self.by_device.is_empty() {
            return;
        }
        let mut touched: Vec<(&str, &str)> = fresh
            .iter()
            .map(|r| (r.device.as_str(), r.sensor.as_str()))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut devices: Vec<&str> = touched.iter().map(|(d, _)| *d).collect();
        devices.dedup();
        let mut sent = 0;
        for device in devices {
            let Some(watchers) = self.by_device.get(device) else {
                continue;
            };
            let mut encoded: Vec<((Option<&str>, Option<&[u8]>), Option<Packet>)> = Vec::new();
            for w in watchers.values() {
                let sensor = w.sensor.as_deref();
                if sensor.is_some_and(|s| !touched.contains(&(device, s))) {
                    continue;
                }
                let key = (sensor, w.accept.as_deref());
                let i = match encoded.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        encoded.push((key, state(table, device, sensor, key.1, max_block)));
                        encoded.len() - 1
                    }
                };
                if let Some(p) = &encoded[i].1 {
                    w.to.notify(w.peer, w.token.clone(), p.clone());
                    sent += 1;
                }
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

/// A resource's state as a notification: what a GET with `accept` would answer, its first
/// block if it is large. `None` if there is nothing to say (no readings, or a format the
/// registration's answer could not have had).
fn state(
    table: &Latest,
    device: &str,
    sensor: Option<&str>,
    accept: Option<&[u8]>,
    max_block: usize,
) -> Option<Packet> {
    let readings = table.get(device, sensor)?;
    let mut get = Packet::new();
    if let Some(a) = accept {
        get.add_option(CoapOption::Accept, a.to_vec());
    }
    let mut p = latest::answer(&get, &readings, max_block).ok()?;
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
}
