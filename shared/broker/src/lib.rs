//! RabbitMQ: the topology the ERP and the fleet agree on, and publishing with confirms.
//!
//! Topology (declared idempotently by every worker at start):
//!
//! ```text
//! erp.contracts (topic) ──contract.<type>──▶ erp.contracts.<type>   quorum, one per type
//! skeelo.retry  (direct) ──contract.<type>──▶ erp.contracts.<type>   (retries and requeues
//!                                                                     reach only our queue)
//! skeelo.delay  (headers, skeelo-delay=<ms>) ──▶ skeelo.delay.<ms>ms  TTL = <ms>, then
//!                                          dead-lettered to skeelo.retry with its routing key
//! skeelo.requeue (direct) ──contract.<type>──▶ skeelo.requeue   dead letters sent back by
//!                                                             operators or the fleet:
//!                                                             their own queue, so they
//!                                                             never stand in front of
//!                                                             new events
//! erp.contracts.dead (fanout) ──▶ erp.contracts.dead   what RabbitMQ itself dead-letters
//!                                                       (delivery limit); moved to PostgreSQL
//! skeelo.results (topic) ──result.#──▶ erp.results     the results, waiting for the ERP
//! ```
//!
//! Every queue is a quorum queue; those that dead-letter use
//! `x-dead-letter-strategy: at-least-once` with `x-overflow: reject-publish`, the only way
//! RabbitMQ dead-letters without a window in which a message can vanish. A delay is one
//! queue per fixed TTL, because RabbitMQ expires messages only at the head of a queue.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use lapin::message::Delivery;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use skeelo_domain::event::EventType;

/// Where the ERP publishes contract events.
pub const EVENTS_EXCHANGE: &str = "erp.contracts";
/// Where the fleet publishes results for the ERP.
pub const RESULTS_EXCHANGE: &str = "skeelo.results";
/// Where rejected work goes.
pub const DEAD_EXCHANGE: &str = "erp.contracts.dead";
/// Where rejected work waits for operators.
pub const DEAD_QUEUE: &str = "erp.contracts.dead";
/// Where results wait for the ERP, so none is lost while it is away.
pub const RESULTS_QUEUE: &str = "erp.results";
/// Routes retries and requeues back to our work queues only.
pub const RETRY_EXCHANGE: &str = "skeelo.retry";
/// Routes a message to the delay queue its `skeelo-delay` header names.
pub const DELAY_EXCHANGE: &str = "skeelo.delay";
/// Our header: attempts that failed so far (the broker owns `x-` headers).
pub const ATTEMPTS_HEADER: &str = "skeelo-attempts";
/// Our header: when the first attempt failed (RFC 3339).
pub const FIRST_FAILURE_HEADER: &str = "skeelo-first-failure";
/// Our header: the last error, in words.
pub const LAST_ERROR_HEADER: &str = "skeelo-last-error";
/// Our header: which delay queue (milliseconds), read by the headers exchange.
pub const DELAY_HEADER: &str = "skeelo-delay";
/// Our header: the dead letter an operator (or the fleet) requeued this from. It
/// survives delayed retries, so a requeued event stays in the partner rate's lowest
/// lane whichever queue it comes back through.
pub const REQUEUED_FROM_HEADER: &str = "skeelo-requeued-from";
/// Where requeued dead letters are published (routing key `contract.<type>`, as the
/// ERP's).
pub const REQUEUE_EXCHANGE: &str = "skeelo.requeue";
/// Where requeued dead letters wait: one queue for every type, consumed a few at a
/// time in the partner rate's lowest lane, so a requeue of thousands never delays a
/// new customer's events.
pub const REQUEUE_QUEUE: &str = "skeelo.requeue";
/// Deliveries of one message before RabbitMQ itself dead-letters it: only a message
/// that kills its worker again and again gets there.
pub const DELIVERY_LIMIT: i64 = 50;

/// The delay queue for one delay.
pub fn delay_queue_name(delay: std::time::Duration) -> String {
    format!("skeelo.delay.{}ms", delay.as_millis())
}

/// The work queue of one event type.
pub fn queue_name(t: EventType) -> String {
    format!("erp.contracts.{}", t.as_str())
}

pub mod management;

/// Broker failures.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The AMQP library reported an error (connection, channel, protocol).
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take a message (nack).
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    /// `AMQP_URL` is not an AMQP URL.
    #[error("AMQP_URL {0}")]
    Url(String),
    /// A TLS file named in `AMQP_URL` cannot be used.
    #[error("AMQP_URL TLS: {0}")]
    Tls(String),
    /// No node of the cluster accepted a connection; the last one's reason.
    #[error("no RabbitMQ node accepted a connection; the last, {node}: {reason}")]
    Node {
        /// The node's address, without its password.
        node: String,
        /// Why it did not.
        reason: String,
    },
    /// No queue is bound for the routing key: the message would have gone nowhere.
    #[error(
        "no queue is bound to {exchange} for routing key {routing_key}: nothing would receive it"
    )]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
}

impl BrokerError {
    /// A failure that waiting cannot fix: a wrong URL or TLS file, a certificate the
    /// client does not trust (or that the broker refuses), refused credentials, a vhost
    /// that does not exist or is not permitted. A process that meets one before it ever
    /// connected stops with it rather than retry for ever.
    pub fn is_permanent(&self) -> bool {
        match self {
            BrokerError::Url(_) | BrokerError::Tls(_) => true,
            BrokerError::Amqp(e) => match e.kind() {
                lapin::ErrorKind::InvalidProtocolVersion(_) => true,
                // 403 access-refused (login), 530 not-allowed (vhost).
                lapin::ErrorKind::ProtocolError(amqp) => matches!(amqp.get_id(), 403 | 530),
                lapin::ErrorKind::IOError(io) => tls_failure(io),
                _ => false,
            },
            BrokerError::Nacked | BrokerError::Unroutable { .. } | BrokerError::Node { .. } => {
                false
            }
        }
    }
}

/// Whether an I/O error is a TLS handshake's refusal (a certificate, a protocol), not
/// a network's failure.
fn tls_failure(io: &std::io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = io.get_ref().map(|e| e as _);
    while let Some(e) = source {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The vhost an AMQP URL names (`/` when it names none), or `None` for a URL that is
/// not one. For a list of a cluster's nodes, the first node's.
pub fn vhost(url: &str) -> Option<String> {
    nodes(url)
        .first()
        .and_then(|u| u.parse::<lapin::uri::AMQPUri>().ok())
        .map(|u| u.vhost)
}

/// The addresses of `AMQP_URL`: one broker, or a cluster's nodes separated by commas.
/// A comma starts a new address only where one begins (`amqp://` or `amqps://`): a
/// password may hold a comma.
pub fn nodes(urls: &str) -> Vec<&str> {
    split_addresses(urls, &["amqp://", "amqps://"])
}

/// Splits a comma-separated list of URLs at the commas followed by one of `schemes`,
/// trimmed, empty pieces left out.
pub(crate) fn split_addresses<'a>(urls: &'a str, schemes: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in urls.match_indices(',') {
        let next = urls[i + 1..].trim_start().to_ascii_lowercase();
        if schemes.iter().any(|s| next.starts_with(s)) || next.is_empty() {
            out.push(&urls[start..i]);
            start = i + 1;
        }
    }
    out.push(&urls[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// What is wrong with an `AMQP_URL`, if anything: every address an amqp:// or amqps://
/// URL, and one vhost for all of them (they are nodes of one cluster).
pub fn check_urls(urls: &str) -> Result<(), String> {
    let list = nodes(urls);
    if list.is_empty() {
        return Err("give at least one amqp:// or amqps:// address".into());
    }
    // Another scheme after a comma is a wrong address, not part of a password.
    for (i, _) in urls.match_indices(',') {
        let next = urls[i + 1..].trim_start();
        let scheme = next.split("://").next().unwrap_or("");
        let looks_like_scheme = next.contains("://")
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
        if looks_like_scheme && !matches!(scheme.to_ascii_lowercase().as_str(), "amqp" | "amqps") {
            let piece = next.split(',').next().unwrap_or(next);
            return Err(format!(
                "`{}` must start with amqp:// or amqps://",
                redacted(piece)
            ));
        }
    }
    let mut vhosts = Vec::new();
    for u in &list {
        let parsed = u
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("`{}` is not an AMQP URL: {e}", redacted(u)))?;
        if !u.starts_with("amqp://") && !u.starts_with("amqps://") {
            return Err(format!(
                "`{}` must start with amqp:// or amqps://",
                redacted(u)
            ));
        }
        vhosts.push(parsed.vhost);
    }
    vhosts.dedup();
    if vhosts.len() > 1 {
        return Err(format!(
            "the nodes name different vhosts ({}); a cluster's nodes share one",
            vhosts.join(", ")
        ));
    }
    Ok(())
}

/// How long one node of a cluster may take to accept a connection before the next is
/// tried.
const NODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The heartbeat asked for with several nodes, unless the URL gives one: a node that
/// vanishes without closing its sockets (a host lost, a network cut) is noticed within
/// two of them, rather than the broker's default minute.
const CLUSTER_HEARTBEAT_SECONDS: u16 = 10;

/// Connects, naming the connection so the management UI shows which process holds it.
/// `urls` is one broker or a cluster's nodes. Without the client's own recovery: a
/// tool or a test sees a failure (a refused certificate, a password) at once, and
/// connects again itself if it wants to.
pub async fn connect(urls: &str, name: &str) -> Result<Connection, BrokerError> {
    connect_from(urls, name, 0, false).await.map(|(c, _)| c)
}

/// Connects to the first node of `urls` that accepts, trying them in turn from the
/// `first`-th (modulo their number), and says which one it reached.
///
/// One broker, with `recover`: automatic recovery is on, and the client retries the TCP
/// connection many times with a growing pause, the first connection too (so a refused
/// certificate or password is never seen: ask without `recover` first); a caller
/// bounds the wait with a time limit of its own, and supervises a connection whose
/// recovery does not end. Several nodes: recovery is off, so a node that goes away ends the connection and the
/// caller connects to another node rather than waiting for the lost one; each node gets
/// a few seconds to accept, and a heartbeat of ten seconds finds a node that vanished
/// without a word.
pub async fn connect_from(
    urls: &str,
    name: &str,
    first: usize,
    recover: bool,
) -> Result<(Connection, usize), BrokerError> {
    let list = nodes(urls);
    if list.len() <= 1 {
        let url = list.first().copied().unwrap_or(urls);
        return Ok((open(url, name, recover, None).await?, 0));
    }
    let mut last = None;
    for i in 0..list.len() {
        let at = (first + i) % list.len();
        let opened = tokio::time::timeout(
            NODE_TIMEOUT,
            open(list[at], name, false, Some(CLUSTER_HEARTBEAT_SECONDS)),
        )
        .await;
        match opened {
            Ok(Ok(connection)) => return Ok((connection, at)),
            Ok(Err(e)) => {
                last = Some(BrokerError::Node {
                    node: redacted(list[at]),
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                last = Some(BrokerError::Node {
                    node: redacted(list[at]),
                    reason: format!("no answer within {NODE_TIMEOUT:?}"),
                })
            }
        }
    }
    Err(last.unwrap_or(BrokerError::Node {
        node: String::new(),
        reason: "no address".into(),
    }))
}

/// Opens one connection to `url`. An `amqps://` URL is encrypted with the system's
/// CAs, plus the ones in its `cacertfile` query parameter (a PEM file), and presents
/// the client certificate of `certfile`/`keyfile` (PEM) to a broker that asks for one
/// — RabbitMQ's own URI parameters.
async fn open(
    url: &str,
    name: &str,
    recover: bool,
    heartbeat: Option<u16>,
) -> Result<Connection, BrokerError> {
    let mut uri = url
        .parse::<lapin::uri::AMQPUri>()
        .map_err(|reason| BrokerError::Url(format!("`{}`: {reason}", redacted(url))))?;
    if let Some(h) = heartbeat {
        uri.query.heartbeat.get_or_insert(h);
    }
    let tls = tls_config(url)?;
    let mut props = ConnectionProperties::default().with_connection_name(name.into());
    if recover {
        props = props.enable_auto_recover();
    }
    let runtime = lapin::runtime::default_runtime()?;
    Ok(Connection::connect_uri_with_config(uri, props, tls, runtime).await?)
}

/// The TLS files an AMQP URL names in its query: `cacertfile`, `certfile`, `keyfile`.
fn tls_config(url: &str) -> Result<lapin::tcp::OwnedTLSConfig, BrokerError> {
    let param = |key: &str| -> Option<String> {
        let query = url.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    };
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| BrokerError::Tls(format!("{key} {path}: {e}")))
    };
    let mut config = lapin::tcp::OwnedTLSConfig::default();
    if let Some(path) = param("cacertfile") {
        let pem = read("cacertfile", &path)?;
        config.cert_chain = Some(
            String::from_utf8(pem)
                .map_err(|_| BrokerError::Tls(format!("cacertfile {path}: not a PEM file")))?,
        );
    }
    match (param("certfile"), param("keyfile")) {
        (Some(cert), Some(key)) => {
            config.identity = Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read("certfile", &cert)?,
                key: read("keyfile", &key)?,
            });
        }
        (None, None) => {}
        _ => {
            return Err(BrokerError::Tls(
                "certfile and keyfile go together: give both, or neither".into(),
            ))
        }
    }
    Ok(config)
}

/// Declares every exchange, queue and binding; safe to run from every process at once.
/// `delays` are the retry delays in use (each gets its queue).
pub async fn declare_topology(
    channel: &Channel,
    delays: &[std::time::Duration],
) -> Result<(), BrokerError> {
    declare_shared(channel, delays).await?;
    for t in EventType::ALL {
        declare_work_queue(channel, t).await?;
    }
    Ok(())
}

/// Declares the exchanges and the queues every type shares (dead letters, results,
/// delays): without them no type can work.
pub async fn declare_shared(
    channel: &Channel,
    delays: &[std::time::Duration],
) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (EVENTS_EXCHANGE, ExchangeKind::Topic),
        (RESULTS_EXCHANGE, ExchangeKind::Topic),
        (DEAD_EXCHANGE, ExchangeKind::Fanout),
        (RETRY_EXCHANGE, ExchangeKind::Direct),
        (DELAY_EXCHANGE, ExchangeKind::Headers),
        (REQUEUE_EXCHANGE, ExchangeKind::Direct),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    let queue = QueueDeclareOptions::durable();
    channel
        .queue_declare(DEAD_QUEUE.into(), queue, quorum(None))
        .await?;
    bind(
        channel,
        DEAD_QUEUE,
        DEAD_EXCHANGE,
        "",
        FieldTable::default(),
    )
    .await?;
    let mut args = quorum(Some(DEAD_EXCHANGE));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    channel
        .queue_declare(REQUEUE_QUEUE.into(), queue, args)
        .await?;
    for t in EventType::ALL {
        bind(
            channel,
            REQUEUE_QUEUE,
            REQUEUE_EXCHANGE,
            &t.routing_key(),
            FieldTable::default(),
        )
        .await?;
    }
    channel
        .queue_declare(RESULTS_QUEUE.into(), queue, quorum(None))
        .await?;
    bind(
        channel,
        RESULTS_QUEUE,
        RESULTS_EXCHANGE,
        "result.#",
        FieldTable::default(),
    )
    .await?;
    for delay in delays {
        let name = delay_queue_name(*delay);
        let mut args = quorum(Some(RETRY_EXCHANGE));
        let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        channel
            .queue_declare(name.as_str().into(), queue, args)
            .await?;
        let mut matching = FieldTable::default();
        matching.insert("x-match".into(), long_string("all"));
        matching.insert(
            DELAY_HEADER.into(),
            long_string(&delay.as_millis().to_string()),
        );
        bind(channel, &name, DELAY_EXCHANGE, "", matching).await?;
    }
    Ok(())
}

/// Declares one type's work queue and its bindings. A failure here (a queue that
/// exists with other arguments, say) closes the channel: use one of its own, so that
/// only this type is affected.
pub async fn declare_work_queue(channel: &Channel, t: EventType) -> Result<(), BrokerError> {
    let name = queue_name(t);
    let mut args = quorum(Some(DEAD_EXCHANGE));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    channel
        .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
        .await?;
    bind(
        channel,
        &name,
        EVENTS_EXCHANGE,
        &t.routing_key(),
        FieldTable::default(),
    )
    .await?;
    bind(
        channel,
        &name,
        RETRY_EXCHANGE,
        &t.routing_key(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Every reason [`queue_refusal`] gives.
pub const QUEUE_REFUSALS: [&str; 4] = [
    "access_refused",
    "not_found",
    "resource_locked",
    "precondition_failed",
];

/// The reason, from a fixed set (a metric label), when the broker refused an
/// operation on one queue with a channel-level error: the queue exists with other
/// arguments (`precondition_failed`), is missing (`not_found`), is not ours to use
/// (`access_refused`) or is held exclusively by another connection
/// (`resource_locked`). `None` for anything else, such as a lost connection.
pub fn queue_refusal(e: &lapin::Error) -> Option<&'static str> {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return None;
    };
    match amqp.get_id() {
        403 => Some("access_refused"),
        404 => Some("not_found"),
        405 => Some("resource_locked"),
        406 => Some("precondition_failed"),
        _ => None,
    }
}

/// `url` with its password replaced, for logs and errors.
pub fn redacted(url: &str) -> String {
    let list = split_addresses(url, &["amqp://", "amqps://", "http://", "https://"]);
    if list.len() > 1 {
        return list.into_iter().map(redacted).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    args: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        )
        .await?;
    Ok(())
}

fn quorum(dead_letter_exchange: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    if let Some(dlx) = dead_letter_exchange {
        args.insert("x-dead-letter-exchange".into(), long_string(dlx));
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
    }
    args
}

/// A header value as the broker and our headers exchange compare it.
pub fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// A channel in confirm mode: every publish returns only once the broker has taken
/// responsibility for the message (or refused it).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens its own channel: confirms and consuming never share one.
    pub async fn open(connection: &Connection) -> Result<Publisher, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    /// The channel, for declaring the topology.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a persistent JSON message with `mandatory`, and waits for its confirm.
    pub async fn publish_json(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        self.publish(
            exchange,
            routing_key,
            message_id,
            body,
            FieldTable::default(),
        )
        .await
    }

    /// Same, with headers.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(message_id.into())
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
            }),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
        }
    }
}

/// Reads one of our headers as text.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Reads one of our headers as a count (any integer type a publisher may have used).
pub fn header_int(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

/// What the fleet reads of a delivery besides its body: where it came from, and our
/// retry headers (the broker owns `x-` headers and may rewrite them).
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The routing key it was published with (for a broker dead letter, the one it
    /// had before RabbitMQ dead-lettered it).
    pub routing_key: String,
    /// The AMQP `message_id` (the ERP sets it to the event id).
    pub message_id: Option<String>,
    /// The broker's hint that this may be a second delivery.
    pub redelivered: bool,
    /// Delayed rounds spent before this delivery.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failure: Option<OffsetDateTime>,
    /// Why RabbitMQ dead-lettered it, for deliveries from its dead-letter queue.
    pub death: Option<Death>,
    /// The AMQP `content_encoding` the publisher declared (e.g. `gzip`).
    pub content_encoding: Option<String>,
    /// The dead letter this was requeued from (by an operator or the fleet).
    pub requeued_from: Option<i64>,
}

impl Envelope {
    /// This delivery may be a second copy of a message already handled: the broker
    /// redelivered it, or it comes back from a delay queue (the copy a round sent
    /// carries our first-failure header, whether or not it cost an attempt).
    pub fn may_repeat(&self) -> bool {
        self.redelivered || self.attempts > 0 || self.first_failure.is_some()
    }

    /// Reads a delivery's envelope.
    pub fn of(d: &Delivery) -> Envelope {
        let headers = d.properties.headers().as_ref();
        let death = death(headers);
        Envelope {
            routing_key: death
                .as_ref()
                .and_then(|x| x.routing_key.clone())
                .unwrap_or_else(|| d.routing_key.as_str().to_string()),
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_string()),
            redelivered: d.redelivered,
            attempts: header_int(headers, ATTEMPTS_HEADER)
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32,
            first_failure: header_str(headers, FIRST_FAILURE_HEADER)
                .and_then(|s| OffsetDateTime::parse(&s, &Rfc3339).ok()),
            death,
            content_encoding: d
                .properties
                .content_encoding()
                .as_ref()
                .map(|e| e.as_str().to_string()),
            requeued_from: header_int(headers, REQUEUED_FROM_HEADER),
        }
    }
}

/// A queue's messages waiting and consumers, read with a passive declare on `channel`.
/// `None` when the queue is missing (or the broker refused): the declare then closed
/// the channel, and a fresh one from `connection` takes its place.
pub async fn queue_depth(
    connection: &Connection,
    channel: &mut Channel,
    queue: &str,
) -> Option<(u32, u32)> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(info) => Some((info.message_count(), info.consumer_count())),
        Err(_) => {
            if let Ok(fresh) = connection.create_channel().await {
                *channel = fresh;
            }
            None
        }
    }
}

/// Every queue of the topology an operator looks at: the work queues, the requeue
/// queue, what RabbitMQ dead-lettered, and the results waiting for the ERP.
pub fn operator_queues() -> Vec<String> {
    let mut queues: Vec<String> = EventType::ALL.into_iter().map(queue_name).collect();
    queues.push(REQUEUE_QUEUE.to_string());
    queues.push(DEAD_QUEUE.to_string());
    queues.push(RESULTS_QUEUE.to_string());
    queues
}

/// Sends a parked dead letter back to the fleet through the requeue queue, with
/// publisher confirms, naming the letter it came from (which keeps it in the partner
/// rate's lowest lane).
pub async fn requeue_letter(
    publisher: &Publisher,
    letter_id: i64,
    routing_key: &str,
    message_id: &str,
    body: &[u8],
) -> Result<(), BrokerError> {
    let mut headers = FieldTable::default();
    headers.insert(
        REQUEUED_FROM_HEADER.into(),
        AMQPValue::LongLongInt(letter_id),
    );
    publisher
        .publish(REQUEUE_EXCHANGE, routing_key, message_id, body, headers)
        .await
}

/// The headers of a copy sent to a delay queue: our attempt count, the first
/// failure's time, the last error (cut to 500 characters), which delay queue, and the
/// dead letter it was requeued from, if it was.
pub fn retry_headers(
    attempts: u32,
    first_failure: OffsetDateTime,
    last_error: &str,
    delay: std::time::Duration,
    requeued_from: Option<i64>,
) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(id) = requeued_from {
        headers.insert(REQUEUED_FROM_HEADER.into(), AMQPValue::LongLongInt(id));
    }
    headers.insert(
        ATTEMPTS_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(
        FIRST_FAILURE_HEADER.into(),
        long_string(&first_failure.format(&Rfc3339).unwrap_or_default()),
    );
    let short: String = last_error.chars().take(500).collect();
    headers.insert(LAST_ERROR_HEADER.into(), long_string(&short));
    headers.insert(
        DELAY_HEADER.into(),
        long_string(&delay.as_millis().to_string()),
    );
    headers
}

/// Why RabbitMQ dead-lettered a message: its newest `x-death` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// `delivery_limit`, `rejected`, `expired`, `maxlen`.
    pub reason: String,
    /// The queue it left.
    pub queue: String,
    /// The routing key it had there.
    pub routing_key: Option<String>,
    /// How many times it was dead-lettered from there.
    pub count: i64,
}

impl Death {
    /// In words, for the dead letter's error. (`count` counts how often the message
    /// was dead-lettered from that queue, not how often it was delivered.)
    pub fn describe(&self) -> String {
        let times = match self.count {
            n if n <= 1 => String::new(),
            n => format!(", {n} times"),
        };
        format!(
            "RabbitMQ dead-lettered it from {} ({}{times})",
            self.queue, self.reason
        )
    }
}

fn death(headers: Option<&FieldTable>) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |k: &str| header_str(Some(first), k);
    let routing_key = match first.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().find_map(|k| match k {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        }),
        _ => None,
    };
    Some(Death {
        reason: text("reason").unwrap_or_else(|| "unknown".into()),
        queue: text("queue").unwrap_or_else(|| "?".into()),
        routing_key,
        count: header_int(Some(first), "count").unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_a_list_of_nodes_with_one_vhost() {
        let urls = "amqp://u:p@a:5672/%2f, amqp://u:p@b:5673/%2f,";
        assert_eq!(
            nodes(urls),
            ["amqp://u:p@a:5672/%2f", "amqp://u:p@b:5673/%2f"]
        );
        assert_eq!(check_urls(urls), Ok(()));
        assert_eq!(vhost(urls).as_deref(), Some("/"));
        let e = check_urls("amqp://u:p@a/one,amqp://u:p@b/two").expect_err("two vhosts");
        assert!(e.contains("different vhosts"), "{e}");
        let e = check_urls("amqp://u:secret@a/x,http://u:secret@b/x").expect_err("http");
        assert!(!e.contains("secret"), "{e}");
        assert!(check_urls(" , ").is_err());
        // A comma in a password does not start a node.
        assert_eq!(
            nodes("amqp://u:pa,ss@a/%2f,amqp://u:x@b/%2f"),
            ["amqp://u:pa,ss@a/%2f", "amqp://u:x@b/%2f"]
        );
        assert_eq!(nodes("amqp://u:p@a/%2f,"), ["amqp://u:p@a/%2f"]);
    }

    #[test]
    fn the_vhost_comes_from_the_url() {
        assert_eq!(vhost("amqp://u:p@h:5672/%2f").as_deref(), Some("/"));
        assert_eq!(vhost("amqp://u:p@h:5672/skeelo").as_deref(), Some("skeelo"));
        assert_eq!(vhost("amqp://h").as_deref(), Some("/"));
        assert_eq!(vhost("http://h"), None);
    }

    #[test]
    fn passwords_never_reach_a_log() {
        assert_eq!(
            redacted("amqp://guest:s3cr3t@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redacted("amqps://user:p@ss@broker:5671/vh"),
            "amqps://user:***@broker:5671/vh"
        );
        assert_eq!(redacted("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
        assert_eq!(redacted("amqp://guest@host"), "amqp://guest@host");
        assert_eq!(redacted("not a url"), "not a url");
        assert_eq!(
            redacted("amqp://u:one@a:5672/%2f,amqp://u:two@b:5672/%2f"),
            "amqp://u:***@a:5672/%2f,amqp://u:***@b:5672/%2f"
        );
        assert_eq!(
            redacted("amqp://u:pa,ss@a:5672/%2f, amqps://u:p,w@b/%2f"),
            "amqp://u:***@a:5672/%2f,amqps://u:***@b/%2f"
        );
    }
}
