//! The broker's own count of deliveries handed out and not yet settled, per queue, read
//! from the RabbitMQ management API.
//!
//! AMQP cannot show a consumer deliveries that the broker believes it holds but that
//! never reached it: a quorum queue deleted and declared again under a live consumer
//! keeps that consumer registered on the new queue, sends it no `basic.cancel`, and
//! checks messages out to it that the client never sees. Only the broker's count per
//! queue reveals them. The API is optional; without it the fleet cannot see this
//! fault and says so when it starts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use reqwest::Url;
use serde::Deserialize;

/// How long one read of the API may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the management API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// The setting is not a list of `http(s)://user:password@host:port` addresses.
    #[error("`{0}` is not a management API address (http(s)://user:password@host:15672)")]
    BadUrl(String),
    /// No node's API answered.
    #[error("the management API at {url} could not be read: {reason}")]
    Unreachable {
        /// The address asked, without credentials.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// The API answered with an error status (bad credentials, a vhost not allowed).
    #[error("the management API at {url} answered HTTP {status}")]
    Status {
        /// The address asked, without credentials.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer was not the list of queues expected.
    #[error("the management API at {url} answered something unreadable: {reason}")]
    Unreadable {
        /// The address asked, without credentials.
        url: String,
        /// What could not be read.
        reason: String,
    },
}

/// One node's API: its address without credentials, and the credentials apart.
#[derive(Clone)]
struct Node {
    base: Url,
    user: String,
    password: Option<String>,
}

impl Node {
    fn parse(raw: &str) -> Result<Node, ManagementError> {
        let bad = || ManagementError::BadUrl(crate::redacted(raw));
        let mut base = Url::parse(raw.trim()).map_err(|_| bad())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad());
        }
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = decode(base.username());
        let password = base.password().map(decode);
        base.set_username("").map_err(|_| bad())?;
        base.set_password(None).map_err(|_| bad())?;
        if user.is_empty() {
            return Err(ManagementError::BadUrl(format!(
                "{} (no user: give http://user:password@host:15672)",
                crate::redacted(raw)
            )));
        }
        Ok(Node {
            base,
            user,
            password,
        })
    }

    /// `/api/<path…>` with only `columns` read; each path part is one segment (a vhost
    /// `/` becomes `%2F`).
    fn url(&self, path: &[&str], columns: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("api").extend(path);
        }
        url.set_query(Some(&format!("columns={columns}")));
        url
    }
}

/// A queue or a channel, by name, with its unacknowledged messages (absent while the
/// broker has no statistics for it yet).
#[derive(Deserialize)]
struct Row {
    name: String,
    messages_unacknowledged: Option<u64>,
}

#[derive(Deserialize)]
struct ConsumerRow {
    queue: Named,
    channel_details: Named,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// What the broker counts for each queue of a vhost.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    /// Messages delivered and not yet acknowledged, per queue.
    pub unacked: HashMap<String, u64>,
    /// Of those, how many no consumer's channel counts as its own: checked out to a
    /// consumer registration that no channel serves (the stall of a queue deleted and
    /// declared again under its consumer). Per queue; queues without any are absent.
    pub orphaned: HashMap<String, u64>,
}

impl Counts {
    /// The queue's counts from the queues' rows, the consumers' rows (which channel
    /// consumes which queue) and the channels' rows.
    fn of(queues: Vec<Row>, consumers: Vec<ConsumerRow>, channels: Vec<Row>) -> Counts {
        let by_channel: HashMap<String, u64> = channels
            .into_iter()
            .map(|c| (c.name, c.messages_unacknowledged.unwrap_or(0)))
            .collect();
        let mut channels_of: HashMap<String, std::collections::BTreeSet<String>> = HashMap::new();
        for c in consumers {
            channels_of
                .entry(c.queue.name)
                .or_default()
                .insert(c.channel_details.name);
        }
        let unacked: HashMap<String, u64> = queues
            .into_iter()
            .filter_map(|q| Some((q.name, q.messages_unacknowledged?)))
            .collect();
        let orphaned = unacked
            .iter()
            .filter_map(|(queue, &n)| {
                let held: u64 = channels_of
                    .get(queue)
                    .into_iter()
                    .flatten()
                    .map(|ch| by_channel.get(ch).copied().unwrap_or(0))
                    .sum();
                let orphans = n.saturating_sub(held);
                (orphans > 0).then(|| (queue.clone(), orphans))
            })
            .collect();
        Counts { unacked, orphaned }
    }
}

/// A client of the management API of one broker or of a cluster's nodes (any node
/// answers for the whole cluster; the next is tried when one does not answer).
pub struct Management {
    nodes: Vec<Node>,
    client: reqwest::Client,
    /// The node that answered last: asked first next time.
    preferred: AtomicUsize,
}

impl Management {
    /// `urls`: one address or several separated by commas, each
    /// `http(s)://user:password@host:port` (a path prefix is kept).
    pub fn new(urls: &str) -> Result<Management, ManagementError> {
        let nodes = crate::split_addresses(urls, &["http://", "https://"])
            .into_iter()
            .map(Node::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(ManagementError::BadUrl(String::new()));
        }
        let client = reqwest::Client::builder()
            .timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| ManagementError::Unreachable {
                url: nodes[0].base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Management {
            nodes,
            client,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The addresses, without credentials, for logs.
    pub fn shown(&self) -> String {
        let shown: Vec<String> = self.nodes.iter().map(|n| n.base.to_string()).collect();
        shown.join(",")
    }

    /// What the broker counts for the queues of `vhost` ([`Counts`]). The broker
    /// refreshes these figures every few seconds (its `collect_statistics_interval`,
    /// 5 s by default), queues and channels apart, so they may lag that much and
    /// disagree for a moment.
    pub async fn counts(&self, vhost: &str) -> Result<Counts, ManagementError> {
        let first = self.preferred.load(Ordering::Relaxed) % self.nodes.len();
        let mut last = None;
        for i in 0..self.nodes.len() {
            let at = (first + i) % self.nodes.len();
            match self.read(&self.nodes[at], vhost).await {
                Ok(counts) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(counts);
                }
                // A refusal (credentials, permissions, an unknown vhost) speaks for the
                // whole cluster; a node failing (5xx, booting, partitioned) does not.
                Err(e @ ManagementError::Status { status, .. }) if status < 500 => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ManagementError::BadUrl(String::new())))
    }

    async fn read(&self, node: &Node, vhost: &str) -> Result<Counts, ManagementError> {
        let queues = self
            .get(
                node,
                node.url(&["queues", vhost], "name,messages_unacknowledged"),
            )
            .await?;
        let consumers = self
            .get(
                node,
                node.url(&["consumers", vhost], "queue.name,channel_details.name"),
            )
            .await?;
        let channels = self
            .get(
                node,
                node.url(
                    &["vhosts", vhost, "channels"],
                    "name,messages_unacknowledged",
                ),
            )
            .await?;
        Ok(Counts::of(queues, consumers, channels))
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        node: &Node,
        url: Url,
    ) -> Result<T, ManagementError> {
        let shown = || url.as_str().to_string();
        let answer = self
            .client
            .get(url.clone())
            .basic_auth(&node.user, node.password.as_deref())
            .send()
            .await
            .map_err(|e| ManagementError::Unreachable {
                url: shown(),
                reason: e.to_string(),
            })?;
        if !answer.status().is_success() {
            return Err(ManagementError::Status {
                url: shown(),
                status: answer.status().as_u16(),
            });
        }
        answer
            .json()
            .await
            .map_err(|e| ManagementError::Unreadable {
                url: shown(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_address() {
        let m = Management::new("http://guest:s%40cret@127.0.0.1:15672").expect("parsed");
        assert_eq!(m.nodes[0].user, "guest");
        assert_eq!(m.nodes[0].password.as_deref(), Some("s@cret"));
        assert_eq!(m.shown(), "http://127.0.0.1:15672/");
        assert!(!m.shown().contains("cret"));
    }

    #[test]
    fn the_vhost_is_one_path_segment() {
        let m = Management::new("http://guest:guest@h:15672/rabbit/").expect("parsed");
        assert_eq!(
            m.nodes[0].url(&["queues", "/"], "name").as_str(),
            "http://h:15672/rabbit/api/queues/%2F?columns=name"
        );
        assert_eq!(
            m.nodes[0]
                .url(&["vhosts", "skeelo", "channels"], "name")
                .path(),
            "/rabbit/api/vhosts/skeelo/channels"
        );
    }

    fn row(name: &str, n: Option<u64>) -> Row {
        Row {
            name: name.into(),
            messages_unacknowledged: n,
        }
    }

    fn consumer(queue: &str, channel: &str) -> ConsumerRow {
        ConsumerRow {
            queue: Named { name: queue.into() },
            channel_details: Named {
                name: channel.into(),
            },
        }
    }

    #[test]
    fn messages_no_consumer_channel_counts_are_orphaned() {
        let counts = Counts::of(
            vec![
                row("block", Some(1)),
                row("sync", Some(300)),
                row("cancel", Some(0)),
                row("new", None),
            ],
            vec![
                // block's consumer: its channel counts nothing (the stall).
                consumer("block", "w1 (6)"),
                // sync: two replicas hold everything between them.
                consumer("sync", "w1 (2)"),
                consumer("sync", "w2 (2)"),
                consumer("cancel", "w1 (5)"),
            ],
            vec![
                row("w1 (6)", Some(0)),
                row("w1 (2)", Some(256)),
                row("w2 (2)", Some(44)),
                row("w1 (5)", None),
            ],
        );
        assert_eq!(
            counts.unacked.len(),
            3,
            "a queue without statistics is left out"
        );
        assert_eq!(counts.unacked["sync"], 300);
        assert_eq!(
            counts.orphaned,
            HashMap::from([("block".to_string(), 1)]),
            "only block holds messages no channel counts"
        );
    }

    #[test]
    fn unacked_messages_with_no_consumer_at_all_are_orphaned() {
        let counts = Counts::of(vec![row("q", Some(3))], vec![], vec![]);
        assert_eq!(counts.orphaned["q"], 3);
    }

    #[test]
    fn a_cluster_is_a_list() {
        let m = Management::new("http://u:p@a:15672, http://u:p@b:15672,").expect("parsed");
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(m.shown(), "http://a:15672/,http://b:15672/");
    }

    #[test]
    fn bad_addresses_are_refused_without_the_password() {
        for bad in [
            "",
            "amqp://guest:guest@h:5672",
            "http://h:15672",
            "not a url",
            "http://guest:topsecret@",
        ] {
            let e = Management::new(bad).err().expect(bad).to_string();
            assert!(!e.contains("topsecret"), "{e}");
        }
    }
}
