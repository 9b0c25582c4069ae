//! The source: a durable pull consumer of a JetStream stream. Each fetch is emitted as one
//! batch; its messages are acknowledged only once every sink the source feeds stored the
//! batch, and handed back for redelivery (NAK) if one could not. A message that is not a
//! SenML reading, or whose readings are not the ones its subject names (a device posting
//! as another), is terminated (never delivered again), logged and counted.

use crate::{config::SourceConfig, connect::Settings, subject::Template};
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, PullConsumer},
    AckKind, Message,
};
use futures_util::StreamExt;
use gateway_sdk::{
    tracing, ErrorKind, InitContext, PluginError, Reading, Source, SourceContext, Timestamp,
};
use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

/// The source.
pub struct NatsSource {
    cfg: SourceConfig,
    settings: Settings,
    subject: Template,
}

impl Source for NatsSource {
    const ID: &'static str = "nats";
    const DESCRIPTION: &'static str =
        "consumes readings from NATS JetStream with a durable consumer; acknowledges them once every sink stored them";

    fn new(ctx: &InitContext) -> Result<Self, PluginError> {
        let cfg: SourceConfig = ctx.parse_config()?;
        let settings = Settings::new(ctx, &cfg.connection)?;
        if cfg.batch == 0 {
            return Err(ctx.config_error("batch", "at least 1"));
        }
        if cfg.max_batches_in_flight == 0 {
            return Err(ctx.config_error("max_batches_in_flight", "at least 1"));
        }
        if cfg.durable.is_empty() || cfg.durable.contains(['.', '*', '>', ' ']) {
            return Err(ctx.config_error(
                "durable",
                "a consumer name has no dots, wildcards or spaces",
            ));
        }
        let subject = Template::parse(&cfg.subject).map_err(|e| ctx.config_error("subject", &e))?;
        // A reading is taken only on the subject it makes, and NATS permissions give a
        // publisher whole tokens: with the device and another value in one, device pi (sensor
        // 01-x) and device pi-01 (sensor x) make one subject, and a publisher allowed one
        // posts as the other.
        let shared = subject.shared_tokens();
        if let Some(token) = shared.iter().find(|t| t.contains("{device}")) {
            return Err(ctx.config_error(
                "subject",
                format!(
                    "{:?} puts {token} in one token: readings of two devices could make one subject (pi with sensor 01-x, pi-01 with sensor x), and a publisher allowed one would post as the other; put a . between them",
                    cfg.subject
                ),
            ));
        }
        for token in &shared {
            tracing::warn!(
                "[{}] subject {:?} puts {token} in one token: readings with different values there can make one subject",
                ctx.info().table,
                cfg.subject
            );
        }
        if !cfg.subject.contains("{device}") {
            tracing::warn!(
                "[{}] subject {:?} names no {{device}}: any publisher to the stream can post readings as any device",
                ctx.info().table,
                cfg.subject
            );
        }
        Ok(NatsSource {
            cfg,
            settings,
            subject,
        })
    }

    fn run(&mut self, ctx: &SourceContext) -> Result<(), PluginError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError::fatal(format!("tokio runtime: {e}")))?;
        let (client, consumer) = rt.block_on(self.consumer())?;
        tracing::info!(url = %self.cfg.connection.url, stream = %self.cfg.stream, durable = %self.cfg.durable, "consuming from NATS JetStream");
        // Batches emitted and not yet answered by the sinks: their messages, by number.
        let mut waiting: HashMap<u64, Vec<Message>> = HashMap::new();
        let (done_tx, done) = mpsc::channel::<(u64, Result<(), PluginError>)>();
        let mut next = 0u64;
        let mut terminated = 0u64;
        let mut last_warned: Option<Instant> = None;
        let settle = |rt: &tokio::runtime::Runtime,
                      waiting: &mut HashMap<u64, Vec<Message>>,
                      (n, outcome): (u64, Result<(), PluginError>)| {
            let Some(messages) = waiting.remove(&n) else {
                return;
            };
            let kind = match &outcome {
                Ok(()) => AckKind::Ack,
                // Refused for good: the host kept what the sinks refused in their dead-letter
                // files (and stored the rest), but for a device past its share of them.
                // Delivered again, it would be refused again, for ever, with its whole fetch.
                Err(e) if e.kind == ErrorKind::REJECTED => {
                    tracing::warn!(messages = messages.len(), error = %e.message(), "the sinks refused readings of a batch for good (kept in their dead-letter files, unless their device's files take its share: see the host's log); acknowledged, not delivered again");
                    AckKind::Ack
                }
                Err(e) => {
                    tracing::warn!(messages = messages.len(), error = %e.message(), "the sinks did not store a batch; JetStream will deliver it again");
                    AckKind::Nak(Some(Duration::from_secs(1)))
                }
            };
            rt.block_on(async {
                for m in &messages {
                    // A lost acknowledgement only means a redelivery, which the stores drop.
                    let _ = m.ack_with(kind).await;
                }
            });
        };
        loop {
            // Settle what the sinks answered; with the window full, wait for an answer.
            while let Ok(d) = done.try_recv() {
                settle(&rt, &mut waiting, d);
            }
            if waiting.len() >= self.cfg.max_batches_in_flight {
                if let Ok(d) = done.recv_timeout(Duration::from_millis(200)) {
                    settle(&rt, &mut waiting, d);
                }
                if ctx.is_stopping() {
                    break;
                }
                continue;
            }
            if ctx.is_stopping() {
                break;
            }
            let messages = rt.block_on(fetch(&consumer, self.cfg.batch))?;
            if messages.is_empty() {
                continue;
            }
            let mut readings = Vec::with_capacity(messages.len());
            let mut keep = Vec::with_capacity(messages.len());
            for m in messages {
                match decode(&m, &self.subject) {
                    Ok(mut r) => {
                        readings.append(&mut r);
                        keep.push(m);
                    }
                    Err(why) => {
                        terminated += 1;
                        // Every one counted; a few a minute logged (a publisher could flood
                        // the log otherwise).
                        if last_warned.is_none_or(|t: Instant| t.elapsed() >= WARN_EVERY) {
                            last_warned = Some(Instant::now());
                            tracing::warn!(subject = %m.subject, why = %why, terminated, "a message that is not a SenML reading of its subject was dropped from the consumer (TERM)");
                        }
                        let _ = rt.block_on(m.ack_with(AckKind::Term));
                    }
                }
            }
            if keep.is_empty() {
                continue;
            }
            let n = next;
            next += 1;
            waiting.insert(n, keep);
            let tx = done_tx.clone();
            if let Err(e) = ctx.emit_with(readings, move |outcome| {
                let _ = tx.send((n, outcome));
            }) {
                // Not taken (the host is stopping): JetStream delivers the messages again.
                let messages = waiting.remove(&n).unwrap_or_default();
                rt.block_on(async {
                    for m in &messages {
                        let _ = m.ack_with(AckKind::Nak(None)).await;
                    }
                });
                if e.kind == gateway_sdk::ErrorKind::STOPPED {
                    break;
                }
                return Err(e);
            }
        }
        // Stopping: the sinks keep writing while sources stop; settle what they answer within
        // a couple of seconds (the host gives a source 5 s to return). What is left is handed
        // back, so that JetStream delivers it again at once rather than after ack_wait; if a
        // sink stores it after all, the stores drop the repeat by its id.
        let by = Instant::now() + Duration::from_secs(2);
        while !waiting.is_empty() && Instant::now() < by {
            if let Ok(d) = done.recv_timeout(Duration::from_millis(100)) {
                settle(&rt, &mut waiting, d);
            }
        }
        let unsettled: Vec<Message> = waiting.into_values().flatten().collect();
        rt.block_on(async {
            for m in &unsettled {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
            // The acknowledgements wait in the client's buffer: out with them before it goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        });
        tracing::info!(
            handed_back = unsettled.len(),
            terminated,
            "NATS source stopped"
        );
        Ok(())
    }
}

impl NatsSource {
    /// A connection and the durable pull consumer, made where it is missing. One that exists
    /// is used only with the settings this source relies on: with an acknowledgement policy
    /// of none or all, a message would count as acknowledged before any sink stored it; with
    /// another filter, the source would read other subjects than configured.
    async fn consumer(&self) -> Result<(async_nats::Client, PullConsumer), PluginError> {
        let client = self.settings.connect(None).await?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_stream(&self.cfg.stream)
            .await
            .map_err(|e| PluginError::retry(format!("stream {}: {e}", self.cfg.stream)))?;
        stream
            .get_or_create_consumer(
                &self.cfg.durable,
                pull::Config {
                    durable_name: Some(self.cfg.durable.clone()),
                    filter_subject: self.cfg.filter_subject.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.cfg.ack_wait,
                    max_ack_pending: (self.cfg.batch * self.cfg.max_batches_in_flight * 2) as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| PluginError::retry(format!("consumer {}: {e}", self.cfg.durable)))
            .and_then(|c| {
                let found = &c.cached_info().config;
                let filters = match (found.filter_subject.as_str(), &found.filter_subjects[..]) {
                    (f, []) => vec![f.to_owned()],
                    (_, many) => many.to_vec(),
                };
                if found.ack_policy != AckPolicy::Explicit
                    || filters != [self.cfg.filter_subject.as_str()]
                {
                    return Err(PluginError::config(format!(
                        "durable {:?}: the consumer exists in stream {} with ack policy {:?} and filter {:?}, but this source needs explicit acknowledgements and filter {:?} (a message would otherwise count as stored before any sink stored it): remove it (`nats consumer rm {} {}`) or give another durable",
                        self.cfg.durable,
                        self.cfg.stream,
                        found.ack_policy,
                        filters,
                        self.cfg.filter_subject,
                        self.cfg.stream,
                        self.cfg.durable
                    )));
                }
                Ok((client, c))
            })
    }
}

/// At most one warning about a terminated message this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Up to `max` messages, waiting at most a second for the first. An error status from the
/// server (the consumer was deleted, the stream recreated, a request the consumer refuses)
/// with nothing fetched is an error: the host builds the source again, with backoff, which
/// makes the consumer again. (Before, it was a debug line and an empty fetch, at once and
/// again: a silent busy loop while the readings piled up in the stream.)
async fn fetch(consumer: &PullConsumer, max: usize) -> Result<Vec<Message>, PluginError> {
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| PluginError::retry(format!("fetching from JetStream: {e}")))?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) if out.is_empty() => {
                return Err(PluginError::retry(format!("fetching from JetStream: {e}")))
            }
            Err(e) => {
                tracing::debug!(error = %e, "a fetch ended early");
                break;
            }
        }
    }
    Ok(out)
}

/// The readings of one message: SenML JSON (as the `nats` sink publishes), at most 64
/// records, each naming its device (the pack's `bn`) and making the message's subject with
/// `subject`.
fn decode(m: &Message, subject: &Template) -> Result<Vec<Reading>, String> {
    let pack = gateway_senml::decode_json(&m.payload, 64, Timestamp::now(), "")
        .map_err(|e| e.to_string())?;
    if pack.readings.is_empty() {
        return Err("no records".into());
    }
    if pack.readings.iter().any(|r| r.device.is_empty()) {
        return Err("a record names no device (no bn)".into());
    }
    if let Some(r) = pack
        .readings
        .iter()
        .find(|r| subject.render(r) != m.subject.as_str())
    {
        return Err(format!(
            "a reading of device {:?}, sensor {:?}, name {:?} came on another subject than its own ({})",
            r.device.as_str(),
            r.sensor.as_str(),
            r.name.as_str(),
            subject.render(r)
        ));
    }
    Ok(pack.readings)
}
