//! `skeelo-ops dead`: the operators' console for what failed.
//!
//! Bulk actions act on a filter, never on the page an operator happens to see; they say
//! how many letters they will touch first (`--dry-run`), ask before touching more than
//! one, and write who did what to the audit trail.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use skeelo_broker::{self as broker, Publisher};
use skeelo_domain::mask;
use skeelo_store::dead::{DeadLetter, Filter, LetterState};
use skeelo_store::Store;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::table;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    /// List dead letters (parked ones unless --state says otherwise), newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Most rows to print.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: Db,
    },
    /// Count dead letters by reason, error class and type: what failed, how often.
    Groups {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: Db,
    },
    /// One dead letter: body (personal data masked unless --reveal), reason, error,
    /// attempts, and the contract's history.
    Show {
        /// The dead letter's id (from `list`).
        id: i64,
        /// Show personal data unmasked (written to the audit trail).
        #[arg(long)]
        reveal: bool,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
        /// Who is looking, for the audit trail of --reveal; defaults to $USER.
        #[arg(long, env = "SKEELO_OPERATOR")]
        operator: Option<String>,
        #[command(flatten)]
        db: Db,
    },
    /// Send parked letters back through the normal path (they get new results). Each is
    /// marked requeued only once the broker confirmed its copy.
    Requeue {
        #[command(flatten)]
        select: Select,
        /// One JSON object at the end (matched, requeued, ids, stopped_early) and no
        /// progress lines, for scripts.
        #[arg(long)]
        json: bool,
        /// RabbitMQ.
        #[arg(long, env = "AMQP_URL", hide_env_values = true)]
        amqp_url: String,
        #[command(flatten)]
        db: Db,
    },
    /// Archive parked letters. They stay restorable (`restore`) for --retention-days;
    /// `purge --expired` deletes those whose retention has passed.
    Purge {
        #[command(flatten)]
        select: Select,
        /// How long archived letters stay restorable (1 to 3650).
        #[arg(long, env = "SKEELO_DEAD_RETENTION_DAYS", default_value_t = 30,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        retention_days: u32,
        /// Delete the archived letters whose retention has passed (nothing else).
        #[arg(long, conflicts_with_all = ["ids", "all"])]
        expired: bool,
        #[command(flatten)]
        db: Db,
    },
    /// Bring archived letters back to parked, while their retention lasts.
    Restore {
        /// The dead letters' ids.
        #[arg(required = true)]
        ids: Vec<i64>,
        /// Who is acting (for the audit trail).
        #[arg(long, env = "SKEELO_OPERATOR")]
        operator: Option<String>,
        #[command(flatten)]
        db: Db,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct Db {
    /// PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

/// Which letters by where they stand, as `--state` takes it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum StateArg {
    /// Waiting for an operator.
    #[default]
    Parked,
    /// Sent back by an operator.
    Requeued,
    /// Put aside, restorable for a while.
    Archived,
    /// Every state.
    All,
}

impl From<StateArg> for Option<LetterState> {
    fn from(s: StateArg) -> Option<LetterState> {
        match s {
            StateArg::Parked => Some(LetterState::Parked),
            StateArg::Requeued => Some(LetterState::Requeued),
            StateArg::Archived => Some(LetterState::Archived),
            StateArg::All => None,
        }
    }
}

#[derive(clap::Args, Debug, Default)]
pub(crate) struct FilterArgs {
    /// parked (default), requeued, archived or all.
    #[arg(long, value_enum, default_value = "parked")]
    state: StateArg,
    /// Event type (sync, suspend, …).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// invalid, refused, exhausted or broker.
    #[arg(long, value_parser = ["invalid", "refused", "exhausted", "broker"])]
    reason: Option<String>,
    /// Error class, as `groups` shows it (e.g. unknown_product, http_422_unknown_product).
    #[arg(long)]
    class: Option<String>,
    /// One contract.
    #[arg(long)]
    contract: Option<String>,
    /// Failed last within this long (30m, 2h, 7d) or since an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Option<OffsetDateTime>,
    /// At least this many attempts.
    #[arg(long)]
    min_attempts: Option<i32>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            ids: Vec::new(),
            state: self.state.into(),
            event_type: self.event_type.clone(),
            reason: self.reason.clone(),
            error_class: self.class.clone(),
            contract_id: self.contract.clone(),
            since: self.since,
            min_attempts: self.min_attempts,
            up_to_id: None,
        }
    }

    fn is_narrowed(&self) -> bool {
        self.event_type.is_some()
            || self.reason.is_some()
            || self.class.is_some()
            || self.contract.is_some()
            || self.since.is_some()
            || self.min_attempts.is_some()
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct Select {
    /// Dead letter ids; or use the filters, or --all.
    ids: Vec<i64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Every parked letter.
    #[arg(long)]
    all: bool,
    /// Say how many would be touched, and touch none.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask before touching more than one.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Who is acting (for the audit trail); defaults to $USER.
    #[arg(long, env = "SKEELO_OPERATOR")]
    operator: Option<String>,
}

impl Select {
    fn filter(&self) -> anyhow::Result<Filter> {
        if self.ids.is_empty() && !self.all && !self.filter.is_narrowed() {
            bail!("say which letters: ids, a filter (--type, --reason, --class, --contract, --since, --min-attempts) or --all");
        }
        let mut f = self.filter.filter();
        f.ids = self.ids.clone();
        // Requeue and purge act on parked letters only.
        f.state = Some(LetterState::Parked);
        Ok(f)
    }

    fn describe(&self) -> String {
        if !self.ids.is_empty() {
            return format!("ids {:?}", self.ids);
        }
        if self.all {
            return "all parked".into();
        }
        let f = &self.filter;
        let parts: Vec<String> = [
            f.event_type.as_ref().map(|v| format!("type={v}")),
            f.reason.as_ref().map(|v| format!("reason={v}")),
            f.class.as_ref().map(|v| format!("class={v}")),
            f.contract.as_ref().map(|v| format!("contract={v}")),
            f.since
                .map(|v| format!("since={}", v.format(&Rfc3339).unwrap_or_default())),
            f.min_attempts.map(|v| format!("min_attempts={v}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        parts.join(" ")
    }
}

/// Who acts: `--operator`, `SKEELO_OPERATOR`, else `$USER`.
pub(crate) fn operator(given: &Option<String>) -> String {
    given
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn parse_since(raw: &str) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(t);
    }
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{raw}`: give a span such as 30m, 2h, 7d or an RFC 3339 time"))?;
    let (n, unit) = raw.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{raw}` is not a span"))?;
    let secs = match unit {
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{raw}`: the unit must be m, h or d")),
    };
    Ok(OffsetDateTime::now_utc() - Duration::from_secs(secs))
}

fn when(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Asks before a bulk action; without a terminal, only `--yes` says yes.
fn confirm(what: &str, count: i64, yes: bool) -> anyhow::Result<bool> {
    if count <= 1 || yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("{count} dead letters match; add --yes to {what} them (there is no terminal to ask)");
    }
    print!("{what} {count} dead letters? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List {
            filter,
            limit,
            json,
            db,
        } => list(&filter, limit, json, &db).await,
        Command::Groups { filter, json, db } => groups(&filter, json, &db).await,
        Command::Show {
            id,
            reveal,
            json,
            operator: who,
            db,
        } => {
            let reveal = reveal.then(|| operator(&who));
            show(id, reveal, json, &db).await
        }
        Command::Requeue {
            select,
            json,
            amqp_url,
            db,
        } => requeue(&select, json, &amqp_url, &db).await,
        Command::Purge {
            select,
            retention_days,
            expired,
            db,
        } => purge(&select, retention_days, expired, &db).await,
        Command::Restore {
            ids,
            operator: who,
            db,
        } => restore(&ids, &operator(&who), &db).await,
    }
}

async fn store(db: &Db) -> anyhow::Result<Store> {
    crate::database(&db.database_url).await
}

async fn list(f: &FilterArgs, limit: i64, json: bool, db: &Db) -> anyhow::Result<ExitCode> {
    let store = store(db).await?;
    let filter = f.filter();
    let mut letters = store.dead_letters(&filter, limit).await?;
    let total = store.count_dead_letters(&filter).await?;
    // An error may quote the body it could not read.
    for d in &mut letters {
        d.last_error = mask::text(&d.last_error);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                when(d.last_failed_at),
                d.event_type.clone(),
                d.contract_id.clone().unwrap_or_else(|| "-".into()),
                d.reason.clone(),
                d.error_class.clone(),
                d.attempts.to_string(),
                d.state.to_string(),
                d.last_error.chars().take(70).collect(),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "LAST FAILED",
            "TYPE",
            "CONTRACT",
            "REASON",
            "CLASS",
            "ATTEMPTS",
            "STATE",
            "ERROR",
        ],
        &rows,
    );
    println!("{} of {total} dead letter(s)", letters.len());
    Ok(ExitCode::SUCCESS)
}

async fn groups(f: &FilterArgs, json: bool, db: &Db) -> anyhow::Result<ExitCode> {
    let store = store(db).await?;
    let groups = store.dead_letter_groups(&f.filter()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&groups)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.count.to_string(),
                g.reason.clone(),
                g.error_class.clone(),
                g.event_type.clone(),
                when(g.oldest),
                when(g.newest),
            ]
        })
        .collect();
    table::print(
        &["COUNT", "REASON", "CLASS", "TYPE", "FIRST", "LAST"],
        &rows,
    );
    if let Some(g) = groups.first() {
        println!(
            "\nto requeue a group once its cause is fixed: skeelo-ops dead requeue --reason {} --class {} --type {} --dry-run",
            g.reason, g.error_class, g.event_type
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The body as people may read it: personal data masked wherever it is, in a valid
/// event, in JSON that is not one, and in a body that is not JSON at all.
fn body_for_people(d: &DeadLetter, reveal: bool) -> Value {
    mask::body(&d.body, reveal)
}

/// `reveal`: who asked to see personal data unmasked (the audit trail says so).
async fn show(id: i64, reveal: Option<String>, json: bool, db: &Db) -> anyhow::Result<ExitCode> {
    let store = store(db).await?;
    let Some(mut d) = store.dead_letter(id).await? else {
        eprintln!("no dead letter {id}");
        return Ok(ExitCode::from(3));
    };
    if let Some(who) = &reveal {
        store
            .audit(
                who,
                "reveal",
                &format!("dead letter {id}"),
                1,
                &json!({ "ids": [id] }),
            )
            .await?;
    } else {
        d.last_error = mask::text(&d.last_error);
    }
    let reveal = reveal.is_some();
    let body = body_for_people(&d, reveal);
    let history = match &d.contract_id {
        Some(c) => store.history(c).await?,
        None => Vec::new(),
    };
    if json {
        let mut doc = serde_json::to_value(&d)?;
        doc["body"] = body;
        doc["history"] = history
            .iter()
            .map(|h| {
                json!({"event_id": h.event_id, "type": h.event_type, "version": h.version,
                "outcome": h.outcome, "received_at": when(h.received_at), "detail": h.detail})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Dead letter {}", d.id);
    println!("  state        {}", d.state);
    println!(
        "  type         {} (routing key {})",
        d.event_type, d.routing_key
    );
    println!(
        "  event        {}",
        d.event_id
            .as_deref()
            .or(d.message_id.as_deref())
            .unwrap_or("-")
    );
    println!("  contract     {}", d.contract_id.as_deref().unwrap_or("-"));
    println!("  reason       {} / {}", d.reason, d.error_class);
    println!("  error        {}", d.last_error);
    println!("  attempts     {}", d.attempts);
    println!(
        "  failed       first {}, last {}",
        when(d.first_failed_at),
        when(d.last_failed_at)
    );
    if let Some(t) = d.requeued_at {
        // No name: its copy was parked again before the requeue named who sent it.
        let by = d
            .requeued_by
            .as_deref()
            .unwrap_or("(not named: its copy was parked again first)");
        println!("  requeued     {} by {by}", when(t));
    }
    if let (Some(t), Some(by)) = (d.archived_at, &d.archived_by) {
        let until = d.restore_until.map(when).unwrap_or_default();
        println!(
            "  archived     {} by {by}; restorable until {until}",
            when(t)
        );
    }
    println!(
        "\nBody{}",
        if reveal {
            ""
        } else {
            " (personal data masked; --reveal to see it)"
        }
    );
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !history.is_empty() {
        println!("\nContract history");
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|h| {
                vec![
                    when(h.received_at),
                    h.event_type.clone(),
                    h.version
                        .map(|v| format!("v{v}"))
                        .unwrap_or_else(|| "-".into()),
                    h.outcome.clone(),
                    h.detail.chars().take(80).collect(),
                ]
            })
            .collect();
        table::print(&["RECEIVED", "TYPE", "VERSION", "OUTCOME", "DETAIL"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

async fn requeue(
    select: &Select,
    json_out: bool,
    amqp_url: &str,
    db: &Db,
) -> anyhow::Result<ExitCode> {
    let filter = select.filter()?;
    let store = store(db).await?;
    let count = store.count_dead_letters(&filter).await?;
    if select.dry_run {
        println!(
            "{count} dead letter(s) would be requeued ({})",
            select.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if count == 0 {
        println!("no parked dead letter matches ({})", select.describe());
        return Ok(ExitCode::SUCCESS);
    }
    if !confirm("requeue", count, select.yes)? {
        println!("nothing requeued");
        return Ok(ExitCode::SUCCESS);
    }
    let who = operator(&select.operator);
    let connection = broker::connect(amqp_url, "skeelo-ops requeue")
        .await
        .context("cannot reach RabbitMQ at AMQP_URL")?;
    let publisher = Publisher::open(&connection).await?;
    let mut progress = Progress::new(json_out);
    let requeued = skeelo_repair::requeue::matching(
        &store,
        &publisher,
        &filter,
        &who,
        &select.describe(),
        &mut |n| {
            progress.show(n, count);
            true
        },
    )
    .await?;
    let (done, failure) = (requeued.ids, requeued.stopped_early);
    let _ = connection.close(200, "done".into()).await;
    let shown: Vec<i64> = done.iter().take(1000).copied().collect();
    progress.finish();
    if json_out {
        println!(
            "{}",
            json!({ "matched": count, "requeued": done.len(), "ids": shown, "stopped_early": failure })
        );
    } else {
        println!(
            "requeued {} dead letter(s), confirmed by the broker; they get new results",
            done.len()
        );
        if let Some(f) = &failure {
            eprintln!("stopped early: {f}");
        }
    }
    Ok(if failure.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Progress of a long requeue: one line rewritten in place on a terminal, a line
/// every 100 letters in a log, nothing with `--json` (the count comes at the end).
struct Progress {
    terminal: bool,
    quiet: bool,
    shown: bool,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            quiet,
            shown: false,
        }
    }

    fn show(&mut self, done: usize, of: i64) {
        if self.quiet {
            return;
        }
        if self.terminal {
            if done % 10 == 0 || done as i64 == of {
                eprint!("\rrequeued {done} of {of}");
                self.shown = true;
            }
        } else if done % 100 == 0 {
            eprintln!("requeued {done} of {of}");
        }
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

async fn purge(
    select: &Select,
    retention_days: u32,
    expired: bool,
    db: &Db,
) -> anyhow::Result<ExitCode> {
    let store = store(db).await?;
    let who = operator(&select.operator);
    if expired {
        let n = store.delete_expired().await?;
        store
            .audit(
                &who,
                "delete_expired",
                "archived past retention",
                n as i64,
                &json!({}),
            )
            .await?;
        println!("deleted {n} archived dead letter(s) past their retention");
        return Ok(ExitCode::SUCCESS);
    }
    let filter = select.filter()?;
    let count = store.count_dead_letters(&filter).await?;
    if select.dry_run {
        println!(
            "{count} dead letter(s) would be archived ({})",
            select.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if count == 0 {
        println!("no parked dead letter matches ({})", select.describe());
        return Ok(ExitCode::SUCCESS);
    }
    if !confirm("archive", count, select.yes)? {
        println!("nothing archived");
        return Ok(ExitCode::SUCCESS);
    }
    let retention = Duration::from_secs(u64::from(retention_days) * 86_400);
    let n = store
        .archive(&filter, &who, retention, &select.describe())
        .await?;
    println!("archived {n} dead letter(s); restorable for {retention_days} days with `skeelo-ops dead restore ID…`");
    Ok(ExitCode::SUCCESS)
}

async fn restore(ids: &[i64], who: &str, db: &Db) -> anyhow::Result<ExitCode> {
    let store = store(db).await?;
    let n = store.restore(ids, who, &format!("ids {ids:?}")).await?;
    println!("restored {n} of {} dead letter(s) to parked", ids.len());
    if (n as usize) < ids.len() {
        eprintln!("the others are not archived, or their retention has passed, or their message is parked again");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
