//! RabbitMQ: the topology the ERP and the fleet agree on, and publishing with confirms.
//!
//! Topology (declared idempotently by every worker at start):
//!
//! ```text
//! erp.contracts (topic) ──contract.<type>──▶ erp.contracts.<type>  (quorum, one per type)
//!                                              │ rejected without requeue
//!                                              ▼
//!                            erp.contracts.dead (fanout) ──▶ erp.contracts.dead (queue)
//! skeelo.results (topic) ──result.#──▶ erp.results (queue the ERP reads)
//! ```
//!
//! Work queues are quorum queues with `x-dead-letter-strategy: at-least-once`, which
//! (with `x-overflow: reject-publish`) is the only way RabbitMQ dead-letters without a
//! window in which a message can vanish.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::event::EventType;

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

/// The work queue of one event type.
pub fn queue_name(t: EventType) -> String {
    format!("erp.contracts.{}", t.as_str())
}

/// Broker failures.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The AMQP library reported an error (connection, channel, protocol).
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused to take a message (nack).
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
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

/// Connects with automatic recovery on, naming the connection so the management UI
/// shows which process holds it.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default()
        .enable_auto_recover()
        .with_connection_name(name.into());
    Ok(Connection::connect(url, props).await?)
}

/// Declares every exchange, queue and binding; safe to run from every process at once.
pub async fn declare_topology(channel: &Channel) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            RESULTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions::durable();
    channel
        .queue_declare(DEAD_QUEUE.into(), queue, quorum(None))
        .await?;
    bind(channel, DEAD_QUEUE, DEAD_EXCHANGE, "").await?;
    channel
        .queue_declare(RESULTS_QUEUE.into(), queue, quorum(None))
        .await?;
    bind(channel, RESULTS_QUEUE, RESULTS_EXCHANGE, "result.#").await?;
    for t in EventType::ALL {
        let name = queue_name(t);
        channel
            .queue_declare(name.as_str().into(), queue, quorum(Some(DEAD_EXCHANGE)))
            .await?;
        bind(channel, &name, EVENTS_EXCHANGE, &t.routing_key()).await?;
    }
    Ok(())
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
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

fn long_string(s: &str) -> AMQPValue {
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
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(message_id.into());
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
