//! `skeelo-ops user`: the web console's accounts. The password is read from standard
//! input (one line), never from an argument that the shell history or `ps` would keep.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::Context;
use skeelo_store::accounts::Role;

use crate::table;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Command {
    /// Add an account, or change its password, role or language (its sessions end).
    /// The password is read from standard input, e.g.
    ///   printf '%s\n' "$PASSWORD" | skeelo-ops user add ana --role operator
    /// For a console behind a trusted sign-in proxy (SSO), add the names the proxy
    /// sends with --no-password: they have a role, and no password to sign in with.
    Add {
        /// The account's name, as the audit trail will show it.
        name: String,
        /// viewer (reads, personal data masked) or operator (also requeues, purges,
        /// restores and reveals personal data).
        #[arg(long, value_parser = ["viewer", "operator"])]
        role: String,
        /// The console's language for this account: en or pt-BR (default: the
        /// browser's).
        #[arg(long, value_parser = ["en", "pt-BR"])]
        lang: Option<String>,
        /// No password (nothing is read from standard input): the account signs in
        /// only through the console's trusted sign-in proxy
        /// (SKEELO_CONSOLE_TRUSTED_HEADER).
        #[arg(long)]
        no_password: bool,
        #[command(flatten)]
        db: Db,
    },
    /// Remove an account and its sessions.
    Remove {
        /// The account's name.
        name: String,
        #[command(flatten)]
        db: Db,
    },
    /// List the accounts.
    List {
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

/// Passwords shorter than this are refused.
const SHORTEST: usize = 10;

pub(crate) async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Add {
            name,
            role,
            lang,
            no_password,
            db,
        } => {
            let name = name.trim();
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                anyhow::bail!("an account name is 1 to 64 printable characters");
            }
            let role = Role::from_name(&role).context("role: viewer or operator")?;
            let mut password = String::new();
            if !no_password {
                std::io::stdin()
                    .lock()
                    .read_line(&mut password)
                    .context("reading the password from standard input")?;
                let typed = password.trim_end_matches(['\r', '\n']).to_string();
                if typed.chars().count() < SHORTEST {
                    anyhow::bail!(
                        "the password (read from standard input) must have at least {SHORTEST} characters; \
                         for an account that signs in only through a sign-in proxy, use --no-password"
                    );
                }
                password = typed;
            }
            let store = crate::database(&db.database_url).await?;
            store.migrate().await?;
            store
                .put_account(
                    name,
                    (!no_password).then_some(password.as_str()),
                    role,
                    lang.as_deref(),
                )
                .await?;
            let how = if no_password {
                ", signs in through the sign-in proxy only"
            } else {
                ""
            };
            println!("account {name} saved ({}{how})", role.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { name, db } => {
            let store = crate::database(&db.database_url).await?;
            if store.remove_account(&name).await? {
                println!("account {name} removed");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("there is no account {name}");
                Ok(ExitCode::from(1))
            }
        }
        Command::List { db } => {
            let store = crate::database(&db.database_url).await?;
            let rows: Vec<Vec<String>> = store
                .accounts()
                .await?
                .into_iter()
                .map(|a| {
                    vec![
                        a.name,
                        a.role.as_str().to_string(),
                        a.lang.unwrap_or_else(|| "browser's".into()),
                    ]
                })
                .collect();
            table::print(&["NAME", "ROLE", "LANGUAGE"], &rows);
            Ok(ExitCode::SUCCESS)
        }
    }
}
