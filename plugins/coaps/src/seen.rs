//! Which readings the ingress stored lately, and which it is storing: re-sent readings are
//! dropped, and a pack that overlaps one still being stored waits. No I/O, no clock.
//!
//! A reading is known by its device and its 128-bit id. Ids made by the SDK are UUID version
//! 7: the upper 64 bits hold the millisecond and a generator's random prefix, the lower 64 bits
//! a counter that starts at a random value and counts up by one per reading. So the ids a
//! device sends come in runs: per generator (one per source of the Pi), the lower halves follow
//! each other. [`Seen`] keeps such a run as its first lower half and, per following value, the
//! upper half that went with it (8 bytes a reading). Asking whether an id was stored is then a
//! subtraction and one comparison in memory the pack's neighbours share, not a hash and a trip to
//! a table of a hundred thousand entries per reading (with that table, de-duplication took a
//! fifth of the ingress's time at 20 readings per request).
//!
//! The answer is exact: an id counts as stored only if its upper half is the one kept at its
//! place in a run. Ids that fit no run (another UUID version, such as the ids the ingress
//! derives for records without `rid`, or more generators than [`MAX_RUNS`]) are kept as they
//! are in a per-device set, hashed with a secret key.
//!
//! Forgetting is by generation, as before: when the newer generation holds `capacity` slots, the
//! older one is dropped whole and the newer becomes the older. A slot is an id, or a gap of a
//! run (an id of the run that was not stored, at most [`MAX_GAP`] in a row); so at least
//! `capacity` ids are remembered when a device's ids come without gaps.
//!
//! One device takes at most a share of the newer generation (an eighth of it, at least 1,024
//! slots): a device that fills its share (sending many readings, or ids far apart, whose gaps
//! take slots) has its own slots moved to the older generation, in place of its older ones, and
//! starts again. So it shortens its own memory only: it cannot make the generations turn over
//! for everyone, which would let the other devices' re-sent readings through. Each device is
//! then remembered for at least its share, or its part of `capacity` less a share per device
//! that fills its own; at most three times `capacity` slots are held.

use crate::request::Refused;
use gateway_coap::{retry_later, Keyed};
use gateway_sdk::{Label, Reading};
use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    hash::{BuildHasher, BuildHasherDefault},
};

/// A device, as a 64-bit hash of its name keyed with [`Seen`]'s secret: copied and compared
/// as a number, and no peer can pick a name whose tag matches another device's.
type Tag = u64;

/// Runs kept per device and generation; a new run past these pushes the smallest into the
/// device's set.
pub const MAX_RUNS: usize = 8;
/// The most ids of a run that may be missing between two stored ones (readings of the run
/// stored in another order, or never sent here).
pub const MAX_GAP: u64 = 64;
/// The upper half kept in a gap of a run. No id with this upper half goes into a run.
const ABSENT: u64 = 0;

fn split(id: u128) -> (u64, u64) {
    ((id >> 64) as u64, id as u64)
}

fn join(hi: u64, lo: u64) -> u128 {
    (u128::from(hi) << 64) | u128::from(lo)
}

/// Whether an id's upper half marks UUID version 7 (and is not [`ABSENT`]).
fn runs_in_order(hi: u64) -> bool {
    hi != ABSENT && (hi >> 12) & 0xF == 7
}

/// The hasher of the maps keyed by [`Tag`]: the tag as it is (it is a keyed hash already).
#[derive(Default)]
struct TagHash(u64);

impl std::hash::Hasher for TagHash {
    fn write(&mut self, bytes: &[u8]) {
        // Only a `Tag` is hashed with this, and it writes one u64; anything else still spreads.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type ByTag<V> = HashMap<Tag, V, BuildHasherDefault<TagHash>>;

/// Takes the device `tag` out of `devices` if it holds `share` slots or more.
fn remove_if_full(devices: &mut ByTag<Device>, tag: Tag, share: usize) -> Option<Device> {
    if devices.get(&tag)?.slots >= share {
        devices.remove(&tag)
    } else {
        None
    }
}

/// Ids whose lower halves follow each other from `start`, each slot the upper half of the id
/// stored there, or [`ABSENT`].
struct Run {
    start: u64,
    his: VecDeque<u64>,
}

impl Run {
    /// The slot of lower half `lo`, if the run covers it.
    fn slot(&self, lo: u64) -> Option<usize> {
        let i = lo.wrapping_sub(self.start);
        (i < self.his.len() as u64).then_some(i as usize)
    }
}

/// One device's stored ids in one generation.
#[derive(Default)]
struct Device {
    runs: Vec<Run>,
    loose: HashSet<u128, Keyed>,
    /// Slots taken.
    slots: usize,
}

impl Device {
    fn contains(&self, id: u128) -> bool {
        let (hi, lo) = split(id);
        if hi != ABSENT {
            for r in &self.runs {
                if r.slot(lo).is_some_and(|i| r.his[i] == hi) {
                    return true;
                }
            }
        }
        !self.loose.is_empty() && self.loose.contains(&id)
    }

    /// Remembers `id` if it comes right after the end of the device's only run (a device's
    /// ids count up, so this is the usual case) and returns the slot it took; `None` if the
    /// general path ([`Device::insert`], which would do the same here) must take it.
    #[inline]
    fn append(&mut self, id: u128) -> Option<usize> {
        let (hi, lo) = split(id);
        match self.runs.as_mut_slice() {
            [r] if runs_in_order(hi) && lo.wrapping_sub(r.start) == r.his.len() as u64 => {
                r.his.push_back(hi);
                Some(1)
            }
            _ => None,
        }
    }

    /// Remembers `id`; returns the slots it took.
    fn insert(&mut self, id: u128) -> usize {
        let (hi, lo) = split(id);
        if !runs_in_order(hi) {
            return usize::from(self.loose.insert(id));
        }
        // In a run that covers it: in its gap, or already there; a slot of another id sends it
        // to the set.
        let mut taken = false;
        for r in &mut self.runs {
            if let Some(i) = r.slot(lo) {
                if r.his[i] == ABSENT {
                    r.his[i] = hi;
                    return 0;
                }
                if r.his[i] == hi {
                    return 0;
                }
                taken = true;
            }
        }
        if taken {
            return usize::from(self.loose.insert(id));
        }
        // Just past a run's end or before its start.
        for r in &mut self.runs {
            let after = lo.wrapping_sub(r.start).wrapping_sub(r.his.len() as u64);
            if after < MAX_GAP {
                r.his.extend(std::iter::repeat_n(ABSENT, after as usize));
                r.his.push_back(hi);
                return after as usize + 1;
            }
            let before = r.start.wrapping_sub(lo);
            if (1..=MAX_GAP).contains(&before) {
                for _ in 1..before {
                    r.his.push_front(ABSENT);
                }
                r.his.push_front(hi);
                r.start = lo;
                return before as usize;
            }
        }
        if self.runs.len() >= MAX_RUNS {
            // The smallest run goes to the set (its slots stay counted: at least its ids).
            let smallest = (0..self.runs.len())
                .min_by_key(|&k| self.runs[k].his.len())
                .expect("MAX_RUNS > 0");
            let r = self.runs.swap_remove(smallest);
            for (i, &hi) in r.his.iter().enumerate() {
                if hi != ABSENT {
                    self.loose.insert(join(hi, r.start.wrapping_add(i as u64)));
                }
            }
        }
        self.runs.push(Run {
            start: lo,
            his: VecDeque::from([hi]),
        });
        1
    }
}

/// The devices' stored ids of one generation.
#[derive(Default)]
struct Generation {
    devices: ByTag<Device>,
    /// Slots taken: ids, and gaps of runs.
    filled: usize,
}

/// A pack being stored: its device's ids, sorted.
struct Flight {
    no: u64,
    ids: Vec<u128>,
}

/// Flights of one device past which a new pack is checked against all their ids at once.
const MANY_FLIGHTS: usize = 8;

/// A device's packs being stored. With few of them (the usual case: a device has NSTART
/// requests out), a new pack is checked against each in one pass over both sorted lists;
/// past [`MANY_FLIGHTS`], against one set of all their ids, so that a device with a
/// thousand held requests cannot make each new pack cost a thousand passes over it (under
/// the lock every worker takes for every request).
#[derive(Default)]
struct InFlight {
    flights: Vec<Flight>,
    all: Option<BTreeSet<u128>>,
}

impl InFlight {
    /// Whether `sorted` shares an id with a pack in flight.
    fn meets(&self, sorted: &[u128]) -> bool {
        match &self.all {
            Some(all) => sorted.iter().any(|id| all.contains(id)),
            None => self.flights.iter().any(|f| meet(&f.ids, sorted)),
        }
    }

    fn push(&mut self, f: Flight) {
        match &mut self.all {
            Some(all) => all.extend(f.ids.iter().copied()),
            None if self.flights.len() >= MANY_FLIGHTS => {
                let all = self
                    .flights
                    .iter()
                    .chain(std::iter::once(&f))
                    .flat_map(|f| f.ids.iter().copied())
                    .collect();
                self.all = Some(all);
            }
            None => {}
        }
        self.flights.push(f);
    }

    /// Takes flight `no` out.
    fn land(&mut self, no: u64) -> Option<Vec<u128>> {
        let k = self.flights.iter().position(|f| f.no == no)?;
        let f = self.flights.swap_remove(k);
        if let Some(all) = &mut self.all {
            for id in &f.ids {
                all.remove(id);
            }
        }
        Some(f.ids)
    }
}

/// Whether two sorted lists share an id.
fn meet(a: &[u128], b: &[u128]) -> bool {
    let (Some(af), Some(al), Some(bf), Some(bl)) = (a.first(), a.last(), b.first(), b.last())
    else {
        return false;
    };
    if al < bf || bl < af {
        return false;
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// The packs of an admitted request that are being stored, to settle with [`Seen::stored`] or
/// [`Seen::failed`]: per device, its tag and the number of its flight. A request's readings are
/// mostly one device's: its key is held inline, so that making and copying the keys of such a
/// request (it is copied once, for the acknowledgement) allocates nothing.
#[derive(Debug, Clone, Default)]
pub enum Keys {
    /// Nothing in flight (every reading was a repeat).
    #[default]
    None,
    /// One device's pack.
    One((Tag, u64)),
    /// Several devices' packs.
    Many(Vec<(Tag, u64)>),
}

impl Keys {
    fn push(&mut self, key: (Tag, u64)) {
        *self = match std::mem::take(self) {
            Keys::None => Keys::One(key),
            Keys::One(first) => Keys::Many(vec![first, key]),
            Keys::Many(mut all) => {
                all.push(key);
                Keys::Many(all)
            }
        };
    }

    fn extend(&mut self, other: Keys) {
        for &key in other.all() {
            self.push(key);
        }
    }

    fn all(&self) -> &[(Tag, u64)] {
        match self {
            Keys::None => &[],
            Keys::One(key) => std::slice::from_ref(key),
            Keys::Many(all) => all,
        }
    }
}

/// Reading ids stored recently, and those in flight.
#[derive(Default)]
pub struct Seen {
    newer: Generation,
    older: Generation,
    capacity: usize,
    in_flight: ByTag<InFlight>,
    flights: u64,
    /// Makes the device tags: keyed SipHash.
    tags: Keyed,
}

/// What [`Seen::admit`] lets through.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The readings not stored yet, in order (per device, if the pack held several).
    pub fresh: Vec<Reading>,
    /// Their flights.
    pub keys: Keys,
    /// How many were dropped as stored already, or repeated within the pack.
    pub duplicates: usize,
}

impl Seen {
    /// Remembers at least `capacity` stored ids of devices that send theirs in runs, each
    /// device at least its share (at most three times `capacity` slots).
    pub fn new(capacity: usize) -> Seen {
        Seen {
            capacity,
            ..Seen::default()
        }
    }

    /// The most slots one device may take in the newer generation: an eighth of `capacity`, at
    /// least 1,024 (all of it, if that is fewer).
    fn share(&self) -> usize {
        let full = self.capacity.max(1);
        (full / 8).max(1024).min(full)
    }

    /// Whether readings are being stored.
    pub fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Drops what was stored already, and repeats of an id within the pack; the rest goes in
    /// flight. A pack that overlaps one still in flight waits its turn (5.03, retry in 1 s).
    pub fn admit(&mut self, readings: Vec<Reading>) -> Result<Admitted, Refused> {
        // One device's readings (what the ingress takes per request): one pack, as it came.
        if let Some(first) = readings.first() {
            if readings.iter().all(|r| r.device == first.device) {
                let p = Pack::new(self.tag(&first.device), readings);
                if self.in_flight_meets(p.tag, &p.ids) {
                    return Err(wait());
                }
                return Ok(self.take_off(p));
            }
        }
        let packs: Vec<Pack> = by_device(readings)
            .into_iter()
            .map(|readings| Pack::new(self.tag(&readings[0].device), readings))
            .collect();
        // All or nothing: no device's readings go in flight if another's must wait.
        if packs.iter().any(|p| self.in_flight_meets(p.tag, &p.ids)) {
            return Err(wait());
        }
        let mut admitted = packs.into_iter().map(|p| self.take_off(p));
        let mut all = admitted.next().unwrap_or_default();
        for a in admitted {
            all.fresh.extend(a.fresh);
            all.keys.extend(a.keys);
            all.duplicates += a.duplicates;
        }
        Ok(all)
    }

    fn tag(&self, device: &Label) -> Tag {
        self.tags.hash_one(device.as_str())
    }

    fn in_flight_meets(&self, tag: Tag, sorted: &[u128]) -> bool {
        self.in_flight.get(&tag).is_some_and(|f| f.meets(sorted))
    }

    /// Puts what `p` holds that was not stored in flight (none of it is in flight: checked).
    fn take_off(&mut self, p: Pack) -> Admitted {
        let Pack {
            tag,
            readings,
            ids,
            in_order,
        } = p;
        let (newer, older) = (self.newer.devices.get(&tag), self.older.devices.get(&tag));
        let stored = |id: u128| {
            newer.is_some_and(|d| d.contains(id)) || older.is_some_and(|d| d.contains(id))
        };
        let before = readings.len();
        let (fresh, flight) = if in_order && !ids.iter().any(|&id| stored(id)) {
            // The common case, nothing stored before: the pack goes in flight as it came.
            (readings, ids)
        } else {
            Self::unstored(readings, ids, in_order, stored)
        };
        let mut keys = Keys::default();
        if !flight.is_empty() {
            self.flights += 1;
            let no = self.flights;
            self.in_flight
                .entry(tag)
                .or_default()
                .push(Flight { no, ids: flight });
            keys.push((tag, no));
        }
        Admitted {
            duplicates: before - fresh.len(),
            fresh,
            keys,
        }
    }

    /// The readings of a pack that were not stored, and their ids, sorted: the first of each
    /// id, if `stored` does not know it.
    fn unstored(
        readings: Vec<Reading>,
        ids: Vec<u128>,
        in_order: bool,
        stored: impl Fn(u128) -> bool,
    ) -> (Vec<Reading>, Vec<u128>) {
        let mut fresh = Vec::with_capacity(readings.len());
        let mut flight = Vec::with_capacity(ids.len());
        if in_order {
            for (r, id) in readings.into_iter().zip(ids) {
                if !stored(id) {
                    fresh.push(r);
                    flight.push(id);
                }
            }
        } else {
            let mut taken = vec![false; ids.len()];
            for r in readings {
                let id = r.id.as_u128();
                let i = ids.binary_search(&id).expect("every id is in the list");
                if !std::mem::replace(&mut taken[i], true) && !stored(id) {
                    fresh.push(r);
                    flight.push(id);
                }
            }
            flight.sort_unstable();
        }
        (fresh, flight)
    }

    /// Takes the flight `no` of `tag` out of flight.
    fn land(&mut self, tag: Tag, no: u64) -> Option<Vec<u128>> {
        let fs = self.in_flight.get_mut(&tag)?;
        let ids = fs.land(no)?;
        if fs.flights.is_empty() {
            self.in_flight.remove(&tag);
        }
        Some(ids)
    }

    /// The readings of `keys` are stored: a repeat of them is dropped from now on.
    pub fn stored(&mut self, keys: &Keys) {
        for &(tag, no) in keys.all() {
            let Some(ids) = self.land(tag, no) else {
                continue;
            };
            let full = self.capacity.max(1);
            let share = self.share();
            let mut ids = ids.into_iter().peekable();
            while ids.peek().is_some() {
                if self.newer.filled >= full || self.older.filled > 2 * full {
                    self.older = std::mem::take(&mut self.newer);
                } else if let Some(d) = remove_if_full(&mut self.newer.devices, tag, share) {
                    // This device alone filled its share: its slots go to the older
                    // generation in place of its older ones; nobody else's are touched.
                    self.newer.filled -= d.slots;
                    self.older.filled += d.slots;
                    if let Some(gone) = self.older.devices.insert(tag, d) {
                        self.older.filled -= gone.slots;
                    }
                }
                // The device is looked up once per generation, not once per id.
                let newer = &mut self.newer;
                let d = newer.devices.entry(tag).or_default();
                for id in ids.by_ref() {
                    let took = d.append(id).unwrap_or_else(|| d.insert(id));
                    d.slots += took;
                    newer.filled += took;
                    if newer.filled >= full || d.slots >= share {
                        break;
                    }
                }
            }
        }
    }

    /// The readings of `keys` were not stored: a repeat of them is taken again.
    pub fn failed(&mut self, keys: &Keys) {
        for &(tag, no) in keys.all() {
            self.land(tag, no);
        }
    }
}

/// One device's readings of a request, with their ids sorted and without repeats.
struct Pack {
    tag: Tag,
    readings: Vec<Reading>,
    ids: Vec<u128>,
    /// Whether the ids came strictly rising (the common case: no repeats, no sorting).
    in_order: bool,
}

impl Pack {
    /// Two readings with one id are one reading: the first is kept and the others are repeats,
    /// as a repeat from an earlier request is. A source that emits a reading again after a
    /// crash (from the same sequence, with stable ids) may give it another time, and a batch
    /// the uplink merged can hold both; refusing the request would refuse the reading for
    /// good.
    fn new(tag: Tag, readings: Vec<Reading>) -> Pack {
        let mut ids: Vec<u128> = readings.iter().map(|r| r.id.as_u128()).collect();
        let in_order = ids.windows(2).all(|w| w[0] < w[1]);
        if !in_order {
            ids.sort_unstable();
            ids.dedup();
        }
        Pack {
            tag,
            readings,
            ids,
            in_order,
        }
    }
}

/// The readings per device, in the order the devices first appear.
fn by_device(readings: Vec<Reading>) -> Vec<Vec<Reading>> {
    let mut groups: Vec<Vec<Reading>> = Vec::new();
    for r in readings {
        match groups.iter_mut().find(|g| g[0].device == r.device) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
}

fn wait() -> Refused {
    let why = "the same readings are being stored; retry";
    Refused {
        reply: retry_later(why, 1),
        why: why.into(),
        bad: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_coap::Code;
    use gateway_sdk::Value;
    use gateway_sdk::{testing::sample_readings, IdGenerator, ReadingId, Timestamp};

    fn code(p: &coap_lite::Packet) -> Code {
        Code::of(p).unwrap()
    }

    /// A reading of `device` with id `id`.
    fn with_id(device: &str, id: u128) -> Reading {
        let mut r = sample_readings(1).remove(0);
        r.device = Label::new(device);
        r.id = ReadingId(id.to_be_bytes());
        // The same reading for the same id (a repeat), whenever it is made.
        r.time = Timestamp(1_800_000_000_000_000);
        r
    }

    /// Admits `ids` of `device` as one pack and stores what is fresh; returns how many were
    /// fresh.
    fn store(seen: &mut Seen, device: &str, ids: &[u128]) -> usize {
        let a = seen
            .admit(ids.iter().map(|&id| with_id(device, id)).collect())
            .unwrap();
        seen.stored(&a.keys);
        a.fresh.len()
    }

    fn known(seen: &mut Seen, device: &str, id: u128) -> bool {
        let a = seen.admit(vec![with_id(device, id)]).unwrap();
        seen.failed(&a.keys);
        a.duplicates == 1
    }

    /// SDK-made ids (UUID version 7, one generator).
    fn v7(n: usize) -> Vec<u128> {
        let g = IdGenerator::new();
        (0..n).map(|_| g.next(Timestamp::now()).as_u128()).collect()
    }

    #[test]
    fn appending_after_the_only_run_is_what_insert_does() {
        // Ids that count up, then a restart (another generator), gaps, repeats, ids below a
        // run's start, and ids not of version 7: each path must end in the same state.
        let mut ids = v7(100);
        ids.extend(v7(50));
        ids.extend([ids[3], ids[120] + 5, ids[120] + 70, ids[0] - 2]);
        ids.extend(random(20, 9));
        ids.extend(v7(30));
        let (mut fast, mut general) = (Device::default(), Device::default());
        for &id in &ids {
            let a = fast.append(id).unwrap_or_else(|| fast.insert(id));
            let b = general.insert(id);
            assert_eq!(a, b, "slots taken by {id:x}");
            fast.slots += a;
            general.slots += b;
        }
        let runs = |d: &Device| {
            d.runs
                .iter()
                .map(|r| (r.start, r.his.iter().copied().collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        assert_eq!(runs(&fast), runs(&general));
        assert_eq!(fast.loose, general.loose);
        assert!(fast.runs.len() > 1, "the test reached the general path");
        assert!(ids.iter().all(|&id| fast.contains(id)));
    }

    /// Random ids, seeded.
    fn random(n: usize, mut x: u64) -> Vec<u128> {
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n).map(|_| join(next(), next())).collect()
    }

    #[test]
    fn a_pack_larger_than_a_generation_keeps_its_newest_ids() {
        let mut seen = Seen::new(4);
        let rs = sample_readings(10);
        let first = seen.admit(rs.clone()).unwrap();
        seen.stored(&first.keys);
        // Generations of 4: the first four ids went with the oldest generation.
        let again = seen.admit(rs.clone()).unwrap();
        assert_eq!((again.fresh.len(), again.duplicates), (4, 6));
        assert_eq!(again.fresh, rs[..4].to_vec());
    }

    #[test]
    fn a_device_whose_ids_take_many_slots_shortens_only_its_own_memory() {
        let mut seen = Seen::new(16_384);
        let honest = v7(10);
        assert_eq!(store(&mut seen, "pi-01", &honest), 10);
        // Another device's ids 63 apart: each takes 63 slots of a run (62 of them a gap).
        // 2,000 of them are 126,000 slots, nearly four generations of everyone's.
        let (hi, lo) = split(v7(1)[0]);
        let spaced: Vec<u128> = (0..2000u64).map(|k| join(hi, lo + 63 * k)).collect();
        for pack in spaced.chunks(100) {
            assert_eq!(store(&mut seen, "spacer", pack), 100);
        }
        for &id in &honest {
            assert!(
                known(&mut seen, "pi-01", id),
                "pi-01's readings are still known"
            );
        }
        // The spacer keeps at least its share (2,048 slots: its last 32 ids) of its own.
        for &id in &spaced[2000 - 32..] {
            assert!(known(&mut seen, "spacer", id));
        }
        assert!(
            !known(&mut seen, "spacer", spaced[0]),
            "its oldest are gone"
        );
        let held = seen.newer.filled + seen.older.filled;
        assert!(held <= 3 * 16_384, "{held} slots");
    }

    /// Past MANY_FLIGHTS packs in flight, a device's new pack is checked against one set of
    /// their ids: it finds the same overlaps, and what lands leaves it.
    #[test]
    fn many_packs_in_flight_are_checked_as_few_are() {
        let mut seen = Seen::new(100_000);
        let pack = |k: u128| -> Vec<Reading> {
            // Pack k holds ids k, k + 1000, k + 2000: every pack spans the others' range.
            (0..3).map(|j| with_id("pi-01", k + 1000 * j)).collect()
        };
        let mut flights = Vec::new();
        for k in 0..200 {
            let a = seen.admit(pack(k)).unwrap();
            assert_eq!(a.fresh.len(), 3);
            flights.push(a.keys);
        }
        let tag = seen.tag(&Label::new("pi-01"));
        assert!(seen.in_flight[&tag].all.is_some());
        // Interleaved with all of them, sharing no id: it goes in flight too.
        let between = seen.admit(pack(500)).unwrap();
        assert_eq!(between.fresh.len(), 3);
        // One id of a pack in flight: it waits.
        for id in [7, 1_007, 2_199] {
            let e = seen.admit(vec![with_id("pi-01", id)]).unwrap_err();
            assert_eq!(code(&e.reply), Code::new(5, 3), "{id}");
        }
        // Another device's same ids are its own.
        assert_eq!(
            seen.admit(vec![with_id("pi-02", 7)]).unwrap().fresh.len(),
            1
        );
        // What failed is out of flight (sent again, it is taken); what was stored is a repeat.
        seen.failed(&flights[7]);
        seen.stored(&flights[8]);
        let again = seen.admit(pack(7)).unwrap();
        assert_eq!((again.fresh.len(), again.duplicates), (3, 0));
        let repeat = seen.admit(pack(8)).unwrap();
        assert_eq!((repeat.fresh.len(), repeat.duplicates), (0, 3));
        // Once all land, nothing of the device is in flight.
        for (k, keys) in flights.iter().enumerate() {
            if k != 7 && k != 8 {
                seen.failed(keys);
            }
        }
        seen.failed(&between.keys);
        seen.failed(&again.keys);
        assert!(!seen.in_flight.contains_key(&tag));
    }

    #[test]
    fn stored_readings_are_dropped_and_overlaps_wait() {
        let mut seen = Seen::new(10);
        let rs = sample_readings(3);
        let first = seen.admit(rs[..2].to_vec()).unwrap();
        assert_eq!((first.fresh.len(), first.duplicates), (2, 0));
        let busy = seen.admit(rs.clone()).unwrap_err();
        assert_eq!(code(&busy.reply), Code::new(5, 3));
        assert!(!busy.bad);
        seen.stored(&first.keys);
        assert!(!seen.busy());
        let mut again = rs.clone();
        again.push(rs[2].clone());
        let next = seen.admit(again).unwrap();
        assert_eq!((next.fresh.len(), next.duplicates), (1, 3));
        seen.failed(&next.keys);
        assert!(!seen.busy());
        assert_eq!(seen.admit(vec![rs[2].clone()]).unwrap().fresh.len(), 1);
    }

    /// A request with readings of several devices is settled for each of them: stored, each
    /// device's repeats are dropped; failed, each is taken again.
    #[test]
    fn a_request_of_several_devices_is_settled_for_each() {
        let mut seen = Seen::new(100);
        let of = |device: &str, ids: &[u128]| -> Vec<Reading> {
            ids.iter().map(|&id| with_id(device, id)).collect()
        };
        let mut request = of("pi-01", &[1, 2]);
        request.extend(of("pi-02", &[1]));
        request.extend(of("pi-03", &[5, 6]));
        let first = seen.admit(request.clone()).unwrap();
        assert_eq!(first.keys.all().len(), 3);
        seen.failed(&first.keys);
        assert!(!seen.busy());
        let second = seen.admit(request.clone()).unwrap();
        assert_eq!((second.fresh.len(), second.duplicates), (5, 0));
        seen.stored(&second.keys);
        assert!(!seen.busy());
        for device in ["pi-01", "pi-02", "pi-03"] {
            let again: Vec<Reading> = request
                .iter()
                .filter(|r| r.device.as_str() == device)
                .cloned()
                .collect();
            let a = seen.admit(again).unwrap();
            assert!(a.fresh.is_empty(), "{device}'s readings were stored");
            assert!(a.keys.all().is_empty());
        }
    }

    #[test]
    fn an_id_is_a_repeat_within_its_device_only_and_the_oldest_are_forgotten() {
        let mut seen = Seen::new(3);
        let rs = sample_readings(6);
        let first = seen.admit(rs[..1].to_vec()).unwrap();
        seen.stored(&first.keys);
        // The same id from another device is that device's own reading.
        let mut other = rs[0].clone();
        other.device = Label::new("another-device");
        let next = seen.admit(vec![other.clone(), rs[0].clone()]).unwrap();
        assert_eq!((next.fresh.len(), next.duplicates), (1, 1));
        assert_eq!(next.fresh[0].device, other.device);
        seen.stored(&next.keys);
        // At least three remembered: four more keep the first device's rs[0] and the other's.
        for r in &rs[1..5] {
            let a = seen.admit(vec![r.clone()]).unwrap();
            seen.stored(&a.keys);
        }
        let again = seen
            .admit(vec![rs[0].clone(), other.clone(), rs[4].clone()])
            .unwrap();
        assert_eq!((again.fresh.len(), again.duplicates), (0, 3));
        // Past twice three, the oldest go.
        let a = seen.admit(vec![rs[5].clone()]).unwrap();
        seen.stored(&a.keys);
        let again = seen
            .admit(vec![rs[0].clone(), other, rs[2].clone()])
            .unwrap();
        assert_eq!((again.fresh.len(), again.duplicates), (2, 1));
        assert_eq!(again.fresh[0].device, rs[0].device);
    }

    #[test]
    fn a_repeat_within_a_pack_goes_once_whatever_the_order() {
        let mut seen = Seen::new(100);
        let ids = v7(4);
        let pack = [ids[2], ids[0], ids[2], ids[1], ids[0]];
        let a = seen
            .admit(pack.iter().map(|&id| with_id("d", id)).collect())
            .unwrap();
        let got: Vec<u128> = a.fresh.iter().map(|r| r.id.as_u128()).collect();
        assert_eq!(got, [ids[2], ids[0], ids[1]], "the first of each, in order");
        assert_eq!(a.duplicates, 2);
        // While it is in flight, a pack with any of its ids waits; one without does not.
        assert!(seen.admit(vec![with_id("d", ids[1])]).is_err());
        let b = seen.admit(vec![with_id("d", ids[3])]).unwrap();
        seen.stored(&a.keys);
        seen.failed(&b.keys);
        assert!(!seen.busy());
        for &id in &ids[..3] {
            assert!(known(&mut seen, "d", id));
        }
        assert!(!known(&mut seen, "d", ids[3]), "its pack failed");
    }

    /// Two readings with one id are one reading: the first is kept and the other is a
    /// repeat, whatever it holds (a reading emitted again after a crash may carry another
    /// time). Refusing the request (4.00), as for a while before 2026-12-07 evening, refused
    /// such a reading for good: the zero-loss test lost it to the dead letters.
    #[test]
    fn a_repeated_id_in_one_request_is_one_reading_the_first() {
        let mut seen = Seen::new(100);
        let ids = v7(3);
        let mut again = with_id("d", ids[0]);
        again.value = Value::Float(99.0);
        let pack = vec![with_id("d", ids[0]), with_id("d", ids[1]), again];
        let a = seen.admit(pack.clone()).unwrap();
        assert_eq!((a.fresh.len(), a.duplicates), (2, 1));
        assert!(a.fresh.iter().all(|r| r.value != Value::Float(99.0)));
        seen.failed(&a.keys);
        // With another device's readings in the request too.
        let mut mixed = vec![with_id("e", ids[2])];
        mixed.extend(pack);
        let a = seen.admit(mixed).unwrap();
        assert_eq!((a.fresh.len(), a.duplicates), (3, 1));
    }

    /// At least the last `n` stored ids are known, none stored before the last `2n`, and
    /// nothing that was never stored.
    fn keeps_one_to_two_generations(ids: &[u128], pack: usize) {
        let n = 200;
        let mut seen = Seen::new(n);
        let never = random(50, 99);
        for (k, chunk) in ids.chunks(pack).enumerate() {
            assert_eq!(store(&mut seen, "d", chunk), chunk.len(), "pack {k} is new");
            assert!(seen.newer.filled <= n + pack && seen.older.filled <= n + pack);
            let last = (k + 1) * pack;
            for back in [1, 2, n / 2, n] {
                if back <= last {
                    let i = last - back;
                    assert!(known(&mut seen, "d", ids[i]), "{i} after {last}");
                }
            }
            if last > 2 * n + pack {
                let i = last - 2 * n - pack - 1;
                assert!(!known(&mut seen, "d", ids[i]), "{i} after {last}");
            }
        }
        for id in never {
            assert!(!known(&mut seen, "d", id));
        }
    }

    #[test]
    fn remembers_one_to_two_generations_of_ids_in_runs() {
        keeps_one_to_two_generations(&v7(2000), 1);
        keeps_one_to_two_generations(&v7(2000), 20);
    }

    #[test]
    fn remembers_one_to_two_generations_of_ids_without_order() {
        keeps_one_to_two_generations(&random(2000, 7), 1);
        keeps_one_to_two_generations(&random(2000, 7), 20);
        // Version 8 (derived from a record's content), in a run or not: kept as they are.
        let derived: Vec<u128> = (0..2000u128).map(|i| (i << 1) | (8 << 76)).collect();
        keeps_one_to_two_generations(&derived, 20);
    }

    #[test]
    fn remembers_several_generators_at_once() {
        // More generators than runs, interleaved one id at a time.
        let gens: Vec<Vec<u128>> = (0..MAX_RUNS + 3).map(|_| v7(200)).collect();
        let mixed: Vec<u128> = (0..200)
            .flat_map(|i| gens.iter().map(move |g| g[i]))
            .collect();
        keeps_one_to_two_generations(&mixed, 20);
    }

    #[test]
    fn packs_stored_out_of_order_fill_their_runs_gaps() {
        let ids = v7(400);
        let mut seen = Seen::new(10_000);
        // Four packs in flight at once, stored last first.
        for window in ids.chunks(80) {
            let admitted: Vec<Admitted> = window
                .chunks(20)
                .map(|c| {
                    seen.admit(c.iter().map(|&id| with_id("d", id)).collect())
                        .unwrap()
                })
                .collect();
            for a in admitted.iter().rev() {
                seen.stored(&a.keys);
            }
        }
        for &id in &ids {
            assert!(known(&mut seen, "d", id));
        }
        let d = &seen.newer.devices[&seen.tag(&Label::new("d"))];
        assert_eq!(d.runs.len(), 1, "one run");
        assert!(d.loose.is_empty());
        assert_eq!(seen.newer.filled, 400, "8 bytes an id, no gaps left");
    }

    #[test]
    fn an_id_is_known_only_with_its_own_upper_half() {
        let mut seen = Seen::new(1000);
        let ids = v7(10);
        store(&mut seen, "d", &ids);
        let (hi, lo) = split(ids[4]);
        // Its lower half with another millisecond, or with the gap marker, is another id.
        assert!(!known(&mut seen, "d", join(hi + (1 << 16), lo)));
        assert!(!known(&mut seen, "d", join(ABSENT, lo)));
        // Stored, both are known, and the run's id still is.
        store(
            &mut seen,
            "d",
            &[join(hi + (1 << 16), lo), join(ABSENT, lo)],
        );
        assert!(known(&mut seen, "d", join(hi + (1 << 16), lo)));
        assert!(known(&mut seen, "d", join(ABSENT, lo)));
        assert!(known(&mut seen, "d", ids[4]));
        // A gap of a run is no id.
        let (hi9, lo9) = split(ids[9]);
        store(&mut seen, "d", &[join(hi9, lo9 + 5)]);
        for gap in 1..5 {
            assert!(!known(&mut seen, "d", join(hi9, lo9 + gap)));
        }
        assert!(known(&mut seen, "d", join(hi9, lo9 + 5)));
    }

    #[test]
    fn never_claims_an_id_that_was_not_stored() {
        // Ids of a few runs, some random, some repeated, some failed, in random packs: every
        // id said to be stored was stored.
        let mut x = 12345u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = v7(1);
        let (hi, lo) = split(base[0]);
        let mut stored = HashSet::new();
        let mut seen = Seen::new(300);
        for _ in 0..3000 {
            let pack: Vec<u128> = (0..1 + next() % 20)
                .map(|_| match next() % 4 {
                    0 => join(next(), next()),
                    1 => join(hi + ((next() % 3) << 16), lo + next() % 600),
                    _ => join(hi, lo + next() % 600),
                })
                .collect();
            let device = ["a", "b"][(next() % 2) as usize];
            let a = seen
                .admit(pack.iter().map(|&id| with_id(device, id)).collect())
                .unwrap();
            for &id in &pack {
                let fresh = a.fresh.iter().any(|r| r.id.as_u128() == id);
                assert!(fresh || stored.contains(&(device, id)), "{id:x} not stored");
            }
            if next() % 5 == 0 {
                seen.failed(&a.keys);
            } else {
                seen.stored(&a.keys);
                stored.extend(a.fresh.iter().map(|r| (device, r.id.as_u128())));
            }
        }
    }
}
