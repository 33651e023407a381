//! `skeelo-ops publish`: events from a JSON-lines file, published as the ERP does
//! (persistent, `message_id` = `event_id`, routing key `contract.<type>`, mandatory,
//! with publisher confirms).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;
use skeelo_broker::{self as broker, Publisher, EVENTS_EXCHANGE};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// JSON-lines file, one event per line; - reads standard input.
    file: PathBuf,
    /// RabbitMQ.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// Publish every line with this routing key instead of contract.<type> (to test
    /// how the fleet answers a mismatch).
    #[arg(long)]
    routing_key: Option<String>,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn BufRead> = if a.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&a.file)
            .with_context(|| format!("cannot open {}", a.file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let connection = broker::connect(&a.amqp_url, "skeelo-ops publish")
        .await
        .context("cannot reach RabbitMQ at AMQP_URL")?;
    let publisher = Publisher::open(&connection).await?;
    let (mut published, mut refused) = (0usize, 0usize);
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let body: Option<Value> = serde_json::from_str(&line).ok();
        let event_type = body
            .as_ref()
            .and_then(|b| b["type"].as_str().map(str::to_string));
        let routing_key = match (&a.routing_key, event_type) {
            (Some(k), _) => k.clone(),
            (None, Some(t)) => format!("contract.{t}"),
            (None, None) => {
                eprintln!("line {}: not a JSON object with a \"type\"; skipped (use --routing-key to send it anyway)", n + 1);
                refused += 1;
                continue;
            }
        };
        let message_id = body
            .as_ref()
            .and_then(|b| b["event_id"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("line-{}", n + 1));
        match publisher
            .publish_json(EVENTS_EXCHANGE, &routing_key, &message_id, line.as_bytes())
            .await
        {
            Ok(()) => published += 1,
            Err(e) => {
                eprintln!("line {}: {e}", n + 1);
                refused += 1;
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    println!("published {published} event(s), confirmed by the broker; {refused} not published");
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
