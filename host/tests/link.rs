//! The secure link through the real host and the real `libcoaps_uplink.so` and `libcoaps_ingress.so`: a sequence source into
//! coaps-uplink, over DTLS on loopback, into coaps-ingress, into a recorder sink that fails for
//! several seconds. The uplink's request times out and it sends the batch again; the ingress
//! answers 5.03 while the first copy is still being stored, then 2.04. Every reading arrives,
//! exactly once, in one process.

mod support;
use std::time::Duration;
use support::*;

#[test]
fn while_the_server_side_sink_fails_the_ingress_answers_5_03_and_nothing_is_lost_or_stored_twice() {
    let s = Setup::new();
    let certs = s.path("certs");
    make_certs(&certs, "test");
    let port = free_udp_port();
    let c = |f: &str| certs.join(f).display().to_string();
    let cfg = s.config(
        "",
        &format!(
            r#"[sources.seq]
plugin = "testkit-sequence"
count = 200
batch_size = 10

[sinks.uplink]
plugin = "coaps-uplink"
inputs = ["seq"]
uri = "coaps://localhost:{port}/gpsflowtemp"
ca_file = {ca:?}
cert_file = {dc:?}
key_file = {dk:?}
ack_timeout = "500ms"
request_timeout = "2s"
retry_backoff = "50ms"
retry_backoff_max = "200ms"

[sources.ingress]
plugin = "coaps-ingress"
listen = "127.0.0.1:{port}"
cert_file = {sc:?}
key_file = {sk:?}
client_ca_file = {ca:?}
require_client_cert = true

[sinks.store]
plugin = "testkit-recorder"
inputs = ["ingress"]
path = {out:?}
fail_first = 3
retry_backoff = "1s"
batch_timeout = "5ms"
"#,
            ca = c("ca.pem"),
            dc = c("device-test.pem"),
            dk = c("device-test.key"),
            sc = c("server.pem"),
            sk = c("server.key"),
            out = s.path("out.txt").display().to_string(),
        ),
    );
    let mut gw = Running::start(&s, &cfg, &[]);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while s.recorded("out.txt", "seq").len() < 200 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = gw.stop(Duration::from_secs(15));
    let err = gw.stderr();
    assert!(status.success(), "{err}");
    let values = s.recorded("out.txt", "seq");
    assert_eq!(values.len(), 200, "{err}");
    assert_contiguous(&values, "through the link");
    assert!(err.contains("DTLS session established"), "{err}");
    // The store failed for about 7 s; the uplink gave up waiting after 2 s and sent the batch
    // again, and the ingress answered 5.03 while the first copy was still being stored.
    let store_retries = err
        .lines()
        .filter(|l| l.contains("sink{instance=store}") && l.contains("write failed; retrying in"))
        .count();
    assert_eq!(store_retries, 3, "{err}");
    assert!(
        err.contains("the server could not take the batch: 5.03"),
        "{err}"
    );
}
