//! The heap of due times against the messages in flight it stands for.

use super::*;
use crate::message::empty;

/// A random life of CON messages (pings to 500 peers, acknowledged or not, retransmitted,
/// given up) checked after every step against a walk over all messages in flight: the next
/// retransmission the heap gives is the earliest of them, a timeout leaves none due, and the
/// heap stays within its bound.
#[test]
fn the_next_retransmission_is_the_earliest_message_in_flight() {
    let mut e: Endpoint<u16> = Endpoint::new(Config::default(), crate::xorshift(7));
    let mut dice = crate::xorshift(11);
    let mut now = Instant::now();
    let mut sent: Vec<(u16, u16)> = Vec::new();
    let (mut acked, mut timeouts) = (0, 0);
    for _ in 0..50_000 {
        match dice() % 8 {
            0..=2 => e.ping(now, (dice() % 500) as u16),
            3..=4 if !sent.is_empty() => {
                // One of the last sent, mostly still in flight.
                let back = (dice() % sent.len().min(64) as u64) as usize;
                let (peer, mid) = sent[sent.len() - 1 - back];
                let before = e.outgoing.len();
                let ack = empty(MessageType::Acknowledgement, mid);
                e.handle_datagram(now, peer, &ack.to_bytes().unwrap());
                acked += before - e.outgoing.len();
            }
            5 => now += Duration::from_millis(dice() % 4_000),
            _ => {
                e.handle_timeout(now);
                assert!(e.outgoing.values().all(|o| o.next_at > now), "one left due");
            }
        }
        while let Some((peer, b)) = e.poll_transmit() {
            sent.push((peer, u16::from_be_bytes([b[2], b[3]])));
        }
        let earliest = e.outgoing.values().map(|o| o.next_at).min();
        assert_eq!(e.due.peek().map(|d| d.at), earliest);
        assert!(e.due.len() <= 2 * e.outgoing.len() + 64 + 1);
        timeouts = e.stats.timeouts;
    }
    // The walk went through all of it.
    assert!(
        acked > 1_000 && timeouts > 1_000,
        "{acked} acked, {timeouts} given up"
    );
    assert!(
        e.stats.retransmissions > 10_000,
        "{}",
        e.stats.retransmissions
    );
}
