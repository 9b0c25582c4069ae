//! The sink: each reading published to JetStream as SenML JSON, its id and device as
//! `Nats-Msg-Id` (so that JetStream drops a re-delivered one within its duplicate window, and
//! no device can pre-claim another's ids), on a subject made from the reading; a batch is done
//! once JetStream acknowledged every reading of it. A reading larger than the server takes
//! (`max_payload`, which it answers by closing the connection, or the stream's max_msg_size,
//! which JetStream refuses at every try) is refused for good.

use crate::{
    config::SinkConfig,
    connect::Settings,
    denied::{self, Denied},
    subject::{self, Template},
};
use async_nats::jetstream::{self, stream::StorageType};
use futures_util::future::join_all;
use gateway_sdk::{tracing, InitContext, PluginError, Reading, Sink};
use ring::hmac;
use std::{fmt::Write as _, time::Duration};

/// The sink.
pub struct NatsSink {
    cfg: SinkConfig,
    settings: Settings,
    subject: Template,
    rt: tokio::runtime::Runtime,
    js: Option<jetstream::Context>,
    /// The largest message (headers and payload): the server's max_payload, from its INFO, or
    /// the stream's max_msg_size, the less.
    max_payload: usize,
    /// The stream's subject filters, as last read ([`stream_subjects`]): when connecting, and
    /// when they seem not to take a subject ([`NatsSink::note_mapping`], `check_subjects`).
    filters: Vec<String>,
    /// Whether the stream has stored a message whose subject none of its filters takes: the
    /// account maps subjects on their way to it, and no reading is refused for its subject.
    mapped: bool,
    table: String,
    /// The instance's data directory, where the key of its message ids is kept.
    data_dir: std::path::PathBuf,
    /// The key of its message ids ([`msg_id`]), read or made at the first open.
    key: Option<hmac::Key>,
    /// Subjects the server lately refused its publishes to (its permissions).
    denied: Denied,
}

/// A reading's JetStream message id: its id in 32 hex digits, `@`, its device (bytes outside
/// printable ASCII, and `%`, as `%XX`), `#`, and 32 hex digits of an HMAC-SHA256 of those under
/// `key`, the sink's own. JetStream drops a message whose id it saw in its duplicate window
/// from anyone who publishes to the stream, on any subject: the stores key readings by (device,
/// id), and so does this id, or a device could send another's next id first; the HMAC keeps a
/// publisher without the key (on a subject of its own, say) from sending it first either.
pub fn msg_id(key: &hmac::Key, r: &Reading) -> String {
    let mut id = format!("{:032x}@", r.id.as_u128());
    for b in r.device.as_str().bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            id.push(b as char);
        } else {
            let _ = write!(id, "%{b:02X}");
        }
    }
    let tag = hmac::sign(key, id.as_bytes());
    id.push('#');
    for b in &tag.as_ref()[..16] {
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// The key of the sink's message ids: 32 random bytes in `msg-id.key` in its data directory,
/// made at the first open and kept, so that a reading sent again after a restart carries the
/// same id. Readable by the gateway's user only, never read or made through a link, and made
/// whole or not at all: written to a file of its own first, then linked into place, which
/// fails if another open (the instance a reload builds, say) made it first.
fn msg_id_key(dir: &std::path::Path) -> Result<hmac::Key, PluginError> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt};
    let path = dir.join("msg-id.key");
    let read = || {
        let mut bytes = Vec::new();
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?
            .read_to_end(&mut bytes)
            .map(|_| bytes)
    };
    let cannot = |e: &dyn std::fmt::Display| {
        PluginError::retry(format!(
            "the key of its message ids, {}: {e}",
            path.display()
        ))
    };
    let bytes = match read() {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The key, and a name of this open's own for the file it is written to first: two
            // opens in one process (the harness's tests, an instance a reload builds) must not
            // share it.
            let mut random = [0u8; 40];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
                .map_err(|_| cannot(&"no random bytes"))?;
            let (key, nonce) = random.split_at(32);
            let tmp = dir.join(format!(
                ".msg-id.key.{}.{:016x}",
                std::process::id(),
                u64::from_ne_bytes(nonce.try_into().expect("8 bytes"))
            ));
            match link_new(dir, &tmp, &path, key) {
                Ok(()) => key.to_vec(),
                // Made meanwhile by another open: that one is the key.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    read().map_err(|e| cannot(&e))?
                }
                Err(e) => return Err(cannot(&e)),
            }
        }
        Err(e) => return Err(cannot(&e)),
    };
    if bytes.len() != 32 {
        return Err(PluginError::config(format!(
            "the key of its message ids, {}, is not 32 bytes: remove it while the gateway is stopped to make a new one (readings sent again within the stream's duplicate_window are then stored twice in the stream, not in the stores)",
            path.display()
        )));
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// Writes `key` to `tmp` (a new file of this open's own, in `dir`), synced, and links it as
/// `path`: the key is there whole or not at all. `AlreadyExists` if another open made `path`
/// first. `tmp` is gone afterwards either way.
fn link_new(
    dir: &std::path::Path,
    tmp: &std::path::Path,
    path: &std::path::Path,
    key: &[u8],
) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt};
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(tmp)
        .and_then(|mut f| f.write_all(key).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::hard_link(tmp, path));
    let _ = std::fs::remove_file(tmp);
    made?;
    std::fs::File::open(dir)?.sync_all()
}

/// Bytes of a message's header block with `id` as its only header: `NATS/1.0\r\n`,
/// `Nats-Msg-Id: ID\r\n`, `\r\n`. The server's `max_payload` counts it.
fn header_bytes(id: &str) -> usize {
    10 + 13 + id.len() + 2 + 2
}

/// Warns about a subject under which two devices' readings can share a subject: without the
/// device in it, or with the device and another value in one token (`{device}-{sensor}`: device
/// pi's sensor 01-x and device pi-01's sensor x). JetStream keeps both, but a consumer that
/// takes the device from the subject (as the `nats` source does, and NATS permissions by
/// subject) would take one device's readings for the other's, and a stream limited per
/// subject (`max_msgs_per_subject`) would drop the one for the other.
fn warn_about_subject(ctx: &InitContext, text: &str, subject: &Template) {
    let table = &ctx.info().table;
    if !text.contains("{device}") {
        tracing::warn!(
            "[{table}] subject {text:?} names no {{device}}: the readings of every device share its subjects; a consumer must take the device from each message's bn, and a stream limited per subject keeps one device's readings in place of another's"
        );
    }
    for token in subject.shared_tokens() {
        tracing::warn!(
            "[{table}] subject {text:?} puts {token} in one token: readings with different values there can make one subject (with the device among them, two devices' readings: pi with sensor 01-x, pi-01 with sensor x); put a . between them"
        );
    }
}

impl Sink for NatsSink {
    const ID: &'static str = "nats";
    const DESCRIPTION: &'static str =
        "publishes readings to NATS JetStream (SenML JSON, id as Nats-Msg-Id), acknowledged after JetStream stored them";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let cfg: SinkConfig = ctx.parse_config()?;
        let settings = Settings::new(ctx, &cfg.connection)?;
        let subject = Template::parse(&cfg.subject).map_err(|e| ctx.config_error("subject", e))?;
        warn_about_subject(ctx, &cfg.subject, &subject);
        if cfg.stream.is_empty() || cfg.stream.contains(['.', '*', '>', ' ']) {
            return Err(
                ctx.config_error("stream", "a stream name has no dots, wildcards or spaces")
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError::fatal(format!("tokio runtime: {e}")))?;
        Ok(NatsSink {
            cfg,
            settings,
            subject,
            rt,
            js: None,
            max_payload: usize::MAX,
            filters: Vec::new(),
            mapped: false,
            table: ctx.info().table.to_string(),
            data_dir: ctx.data_dir(),
            key: None,
            denied: Denied::default(),
        })
    }

    fn open(&mut self) -> Result<(), PluginError> {
        if self.js.is_some() {
            return Ok(());
        }
        if self.key.is_none() {
            self.key = Some(msg_id_key(&self.data_dir)?);
        }
        let (settings, cfg, table) = (self.settings.clone(), self.cfg.clone(), self.table.clone());
        let denied = self.denied.clone();
        let js = self.rt.block_on(async move {
            let client = settings.connect(Some(&denied)).await?;
            let max_payload = client.server_info().max_payload;
            let mut js = jetstream::new(client);
            // The stream is made where it is missing; one that is there is used as it is.
            let stream = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: cfg.stream.clone(),
                    subjects: cfg.stream_subjects.clone(),
                    storage: StorageType::File,
                    duplicate_window: cfg.duplicate_window,
                    ..Default::default()
                })
                .await
                .map_err(|e| PluginError::retry(format!("stream {}: {e}", cfg.stream)))?;
            if let Some(why) = stream_refusal(&stream.cached_info().config) {
                return Err(PluginError::config(format!("stream {}: {why}", cfg.stream)));
            }
            for why in stream_concerns(&stream.cached_info().config) {
                tracing::warn!(table = %table, stream = %cfg.stream, "{why}");
            }
            // A stream of its own may take less than the server (its max_msg_size): JetStream
            // refuses a larger message at each try, which retried would stall the sink.
            let max_msg = usize::try_from(stream.cached_info().config.max_message_size).ok();
            let filters = stream_subjects(&stream.cached_info().config);
            // Each acknowledgement may take all of ack_timeout (async-nats waits 5 s for each
            // otherwise, whatever ack_timeout says). Set after the stream is found: the
            // requests of a connect keep their 5 s, so a JetStream that does not answer holds
            // a connect (a reload, a stop) no longer than before.
            js.set_timeout(cfg.ack_timeout);
            Ok::<_, PluginError>((js, max_payload, max_msg, filters))
        })?;
        let (js, max_payload, max_msg, filters) = js;
        self.filters = filters;
        self.max_payload = [
            Some(max_payload).filter(|m| *m > 0),
            max_msg.filter(|m| *m > 0),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(usize::MAX);
        tracing::info!(table = %self.table, url = %self.cfg.connection.url, stream = %self.cfg.stream, "connected to NATS JetStream");
        self.js = Some(js);
        Ok(())
    }

    fn write(&mut self, batch: &[Reading]) -> Result<(), PluginError> {
        if let Some(why) = gateway_senml::json_refusal(batch) {
            return Err(PluginError::rejected(why));
        }
        self.open()?;
        let js = self.js.clone().expect("opened");
        let timeout = self.cfg.ack_timeout;
        let messages: Vec<(String, String, Vec<u8>)> = batch
            .iter()
            .map(|r| {
                (
                    self.subject.render(r),
                    msg_id(self.key.as_ref().expect("opened"), r),
                    gateway_senml::encode_json(std::slice::from_ref(r)),
                )
            })
            .collect();
        if let Some(i) = messages
            .iter()
            .position(|(_, id, payload)| header_bytes(id) + payload.len() > self.max_payload)
        {
            return Err(PluginError::rejected(format!(
                "{} is {} bytes as a message, more than the server's max_payload or the stream's max_msg_size ({})",
                which(batch, i),
                header_bytes(&messages[i].1) + messages[i].2.len(),
                self.max_payload
            )));
        }
        let subjects: Vec<String> = messages.iter().map(|(s, _, _)| s.clone()).collect();
        if let Some(e) = self.refused_subject(batch, &subjects) {
            return Err(e);
        }
        let denied = self.denied.clone();
        let outcome = self.rt.block_on(async {
            tokio::select! {
                acked = tokio::time::timeout(timeout, publish_all(&js, messages)) => {
                    acked.map_err(|_| {
                        Failed::Other(PluginError::retry(format!(
                            "JetStream did not acknowledge the batch within {}",
                            humantime(timeout)
                        )))
                    })?
                }
                // The server refused a reading's publish: its acknowledgement will not come,
                // and the batch need not wait out ack_timeout for it (refused below).
                _ = denied.until_refused(&subjects) => Err(Failed::Other(PluginError::retry(
                    "the server refused a publish of the batch",
                ))),
            }
        });
        let outcome = match outcome {
            Ok(stored_by) => {
                self.note_mapping(batch, &stored_by, false);
                Ok(())
            }
            // No stream answered a subject: one the stream does not take is refused for good.
            Err(Failed::NoStream(e, failed, stored_by)) => {
                self.check_subjects(batch, &failed, &stored_by).and(Err(e))
            }
            // The server drops a publish its permissions refuse, and says so on the side:
            // the acknowledgement only times out.
            Err(Failed::Other(e)) => Err(self.refused_subject(batch, &subjects).unwrap_or(e)),
        };
        if let Err(e) = &outcome {
            // A new connection for the next try: the batch goes again whole, and JetStream drops
            // the readings it already holds by their ids.
            self.js = None;
            if e.kind.is_retryable() {
                tracing::warn!(table = %self.table, error = %e.message(), "publishing failed; the batch will be sent again");
            }
        }
        outcome
    }
}

impl NatsSink {
    /// The refusal of `batch` when the server lately refused a publish to the subject of one
    /// of its readings (`subjects`, in order): refused for good, or it would time out at
    /// every try and hold every device's readings behind it.
    fn refused_subject(&self, batch: &[Reading], subjects: &[String]) -> Option<PluginError> {
        let now = std::time::Instant::now();
        let i = self.denied.first_refused(subjects, now)?;
        Some(PluginError::rejected(format!(
            "{} goes to subject {}, which the server's publish permissions refuse this sink's user (it said so within the last {} s): allow the subject for the user, then `gateway dead-letters resend`",
            which(batch, i),
            subjects[i],
            denied::REMEMBERED.as_secs()
        )))
    }
}

/// The subjects a stream takes: its own, or its name when it has none (as NATS does).
fn stream_subjects(config: &jetstream::stream::Config) -> Vec<String> {
    if config.subjects.is_empty() {
        vec![config.name.clone()]
    } else {
        config.subjects.clone()
    }
}

impl NatsSink {
    /// The stream's subject filters, read from JetStream now ([`stream_subjects`]).
    fn stream_filters(&self) -> Result<Vec<String>, String> {
        let js = self.js.clone().ok_or("not connected")?;
        let stream = self.cfg.stream.clone();
        self.rt.block_on(async move {
            let mut s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
            s.info()
                .await
                .map(|i| stream_subjects(&i.config))
                .map_err(|e| e.to_string())
        })
    }

    /// Notes that the account maps subjects when the stream stored a reading of `batch` whose
    /// subject none of its filters takes: `stored_by` names the stream that acknowledged each
    /// (none when not stored), and only the configured stream's count (another stream taking
    /// a subject says nothing of a mapping to this one). Unless `fresh` (just read),
    /// the filters are read again first: they may be older than the operator's adding that
    /// subject to the stream (`readings.pi-02.>` beside `readings.pi-01.>`), which is no
    /// mapping, and `mapped`, once set, stays for the instance's life.
    fn note_mapping(&mut self, batch: &[Reading], stored_by: &[Option<String>], fresh: bool) {
        if self.mapped {
            return;
        }
        let outside = |sink: &Self| {
            batch.iter().zip(stored_by).any(|(r, by)| {
                by.as_deref() == Some(sink.cfg.stream.as_str()) && {
                    let subject = sink.subject.render(r);
                    !sink.filters.iter().any(|f| subject::matches(f, &subject))
                }
            })
        };
        if !outside(self) {
            return;
        }
        if !fresh {
            match self.stream_filters() {
                Ok(filters) => self.filters = filters,
                // Not known now: the next reading stored outside them asks again.
                Err(_) => return,
            }
        }
        if outside(self) {
            self.mapped = true;
            tracing::info!(table = %self.table, stream = %self.cfg.stream, "the stream stores subjects none of its filters takes (the account maps them): no reading is refused for its subject");
        }
    }

    /// After JetStream said no stream takes the subjects of the readings `failed` of `batch`:
    /// refuses the batch for good if one of those subjects is none of the stream's (read
    /// again: an operator may just have added one), as JetStream would fail it at each try,
    /// and every reading behind it would wait for ever (an existing stream whose subjects the
    /// template's devices outgrew: `readings.pi-01.>` and a reading of `pi-02`). Not where
    /// the account maps subjects on their way to the stream: there the filters say nothing of
    /// what is published, and "no stream" is taken for a passing state (a stream's leader
    /// being elected), retried.
    fn check_subjects(
        &mut self,
        batch: &[Reading],
        failed: &[usize],
        stored_by: &[Option<String>],
    ) -> Result<(), PluginError> {
        if self.js.is_none() {
            return Ok(());
        }
        self.filters = match self.stream_filters() {
            Ok(filters) => filters,
            Err(e) => {
                self.js = None;
                return Err(PluginError::retry(format!(
                    "stream {}: {e}",
                    self.cfg.stream
                )));
            }
        };
        self.note_mapping(batch, stored_by, true);
        if self.mapped {
            return Ok(());
        }
        let filters = &self.filters;
        let Some((i, subject)) = failed
            .iter()
            .map(|&i| (i, self.subject.render(&batch[i])))
            .find(|(_, subject)| !filters.iter().any(|f| subject::matches(f, subject)))
        else {
            return Ok(());
        };
        Err(PluginError::rejected(format!(
            "{} goes to subject {}, which is none of stream {}'s subjects ({}): no stream would store it",
            which(batch, i),
            subject,
            self.cfg.stream,
            self.filters.join(", ")
        )))
    }
}

/// Reading `i` of `batch` as a refusal names it: `reading 2 of 20 (pi-02/t1/temperature)`.
fn which(batch: &[Reading], i: usize) -> String {
    let r = &batch[i];
    format!(
        "reading {} of {} ({}/{}/{})",
        i + 1,
        batch.len(),
        r.device,
        r.sensor,
        r.name
    )
}

/// Why a publish failed.
enum Failed {
    /// JetStream said no stream takes the subjects of these messages (no responders); the
    /// others were stored, by the streams named (per message, as [`publish_all`] gives them).
    NoStream(PluginError, Vec<usize>, Vec<Option<String>>),
    /// Anything else.
    Other(PluginError),
}

/// Publishes every message, then waits for every acknowledgement; gives the stream that
/// stored each (from its PubAck).
async fn publish_all(
    js: &jetstream::Context,
    messages: Vec<(String, String, Vec<u8>)>,
) -> Result<Vec<Option<String>>, Failed> {
    let mut acks = Vec::with_capacity(messages.len());
    for (subject, id, payload) in messages {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| Failed::Other(PluginError::retry(format!("publishing: {e}"))))?;
        acks.push(ack);
    }
    // Another failure is what the batch answers; "no stream" only when it is all there is.
    let (mut no_stream, mut no_stream_error, mut other) = (Vec::new(), None, None);
    let acks = join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await;
    let mut stored_by = vec![None; acks.len()];
    for (i, r) in acks.into_iter().enumerate() {
        let e = match r {
            Ok(ack) => {
                stored_by[i] = Some(ack.stream);
                continue;
            }
            Err(e) => e,
        };
        let stream_not_found = e.kind() == jetstream::context::PublishErrorKind::StreamNotFound;
        let e = PluginError::retry(format!("JetStream did not store a reading: {e}"));
        if stream_not_found {
            no_stream.push(i);
            no_stream_error.get_or_insert(e);
        } else {
            other.get_or_insert(e);
        }
    }
    if let Some(e) = other {
        return Err(Failed::Other(e));
    }
    if let Some(e) = no_stream_error {
        return Err(Failed::NoStream(e, no_stream, stored_by));
    }
    Ok(stored_by)
}

fn humantime(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Why readings cannot go into a stream set up as `c`: they would be reported stored never.
fn stream_refusal(c: &jetstream::stream::Config) -> Option<String> {
    c.no_ack.then(|| {
        "it is set no_ack, so JetStream acknowledges nothing published into it and no reading could be reported stored; turn no_ack off (nats stream edit)".into()
    })
}

/// What of a stream set up as `c` can lose readings the sink was told were stored.
fn stream_concerns(c: &jetstream::stream::Config) -> Vec<String> {
    let mut why = Vec::new();
    if c.storage == StorageType::Memory {
        why.push(format!(
            "the stream keeps its messages in memory{}: readings acknowledged to the gateway (and gone from its buffer) are lost if NATS restarts; file storage keeps them",
            if c.num_replicas > 1 { ", replicated" } else { "" }
        ));
    }
    if c.retention == jetstream::stream::RetentionPolicy::Interest {
        why.push("the stream's retention is interest: a reading published while no consumer is bound to the stream is dropped at once, though acknowledged to the gateway; limits or workqueue retention keeps it".into());
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_stream_that_acknowledges_nothing_is_refused_and_one_that_may_lose_readings_is_said() {
        let file = jetstream::stream::Config::default();
        assert_eq!(file.storage, StorageType::File);
        assert!(stream_refusal(&file).is_none() && stream_concerns(&file).is_empty());
        let no_ack = jetstream::stream::Config {
            no_ack: true,
            ..Default::default()
        };
        assert!(stream_refusal(&no_ack).unwrap().contains("no_ack"));
        let risky = jetstream::stream::Config {
            storage: StorageType::Memory,
            retention: jetstream::stream::RetentionPolicy::Interest,
            ..Default::default()
        };
        let said = stream_concerns(&risky);
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].contains("in memory") && said[1].contains("interest"));
    }

    #[test]
    fn the_message_id_key_is_made_once_whole_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let r = &gateway_sdk::testing::sample_readings(1)[0];
        let first = msg_id(&msg_id_key(dir.path()).unwrap(), r);
        let file = dir.path().join("msg-id.key");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
        // Read back: the same ids (a reading sent again after a restart is a duplicate).
        assert_eq!(msg_id(&msg_id_key(dir.path()).unwrap(), r), first);
        assert!(first.starts_with(&format!("{:032x}@test-device#", r.id.as_u128())));
        assert_eq!(first.len(), 32 + 1 + "test-device".len() + 1 + 32);
        // Nothing left of the file it was written to first.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Another key, other ids.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(msg_id(&msg_id_key(other.path()).unwrap(), r), first);
        // A key of another length is named, not used.
        std::fs::write(&file, b"short").unwrap();
        let e = msg_id_key(dir.path()).err().unwrap();
        assert_eq!(e.kind, gateway_sdk::ErrorKind::CONFIG, "{e}");
        assert!(e.message().contains("is not 32 bytes"), "{e}");
        // A link in its place is not followed.
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(other.path().join("msg-id.key"), &file).unwrap();
        let e = msg_id_key(dir.path()).err().unwrap();
        assert!(e.message().contains("symbolic links"), "{e}");
    }
}
