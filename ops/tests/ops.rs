//! The operators' command line against a real fleet, broker and database.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use skeelo_domain::event::EventType::*;
use skeelo_domain::sample;
use skeelo_tests::World;

fn ops(w: &World, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skeelo-ops"))
        .args(args)
        .envs(w.env())
        .env("SKEELO_RATE_PER_SECOND", "50")
        .output()
        .expect("skeelo-ops runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_publishes_lists_and_reads_a_contracts_story() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");

    let events = [
        sample::event(Sync, "OP1", 1, &["SKEELO-EBOOKS"]),
        sample::event(Sync, "OP2", 1, &["SKEELO-AUDIOBOOKS"]),
        sample::event(Suspend, "OP2", 2, &[]),
        sample::event(Block, "OP3", 1, &[]),
    ];
    let dir = std::env::temp_dir().join(format!("skeelo-ops-{}", w.vhost));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("events.jsonl");
    let lines: Vec<String> = events.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");

    let out = ops(&w, &["publish", file.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("published 4 event(s)"),
        "{}",
        stdout(&out)
    );
    w.wait_for_events(&events, Duration::from_secs(30))
        .await
        .expect("results");

    let out = ops(&w, &["subscribers", "--status", "active", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let ids: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["contract_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["OP1"]);
    assert!(
        !stdout(&out).contains("assinanteOP1@"),
        "e-mails are masked unless --reveal"
    );

    let out = ops(
        &w,
        &[
            "subscribers",
            "--status",
            "suspended,awaiting-sync",
            "--json",
        ],
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let mut ids: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["contract_id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["OP2", "OP3"]);

    let out = ops(&w, &["subscribers", "--status", "all"]);
    assert!(stdout(&out).contains("CONTRACT"), "a table for people");
    assert!(stdout(&out).contains("3 subscriber(s)"), "{}", stdout(&out));

    let out = ops(&w, &["contract", "show", "OP2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let story: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(story["skeelo_should_be"], "inactive");
    assert_eq!(story["history"].as_array().map(Vec::len), Some(2));
    let document = story["subscriber"]["document"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(document.starts_with("***"), "masked: {document}");

    let out = ops(&w, &["contract", "show", "OP2", "--reveal", "--json"]);
    let story: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(story["subscriber"]["email"]
        .as_str()
        .unwrap_or_default()
        .ends_with("@example.com.br"));

    let out = ops(&w, &["contract", "show", "NOPE"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no contract NOPE"));

    let out = ops(&w, &["check", "--json"]);
    assert!(
        out.status.success(),
        "no drift: {}{}",
        stdout(&out),
        stderr(&out)
    );
    w.close().await.expect("cleanup");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let mut w = World::new().await.expect("world");
    let settings = w.settings();
    w.start_fleet(settings).await.expect("fleet");
    let dir = std::env::temp_dir().join(format!("skeelo-ops-bad-{}", w.vhost));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("events.jsonl");
    let good = sample::event(Sync, "B1", 1, &["SKEELO-EBOOKS"]);
    std::fs::write(&file, format!("this is not json\n{good}\n")).expect("write");
    let out = ops(&w, &["publish", file.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("published 1 event(s)"),
        "{}",
        stdout(&out)
    );

    let out = ops(&w, &["publish", "/no/such/file.jsonl"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot open /no/such/file.jsonl"),
        "{}",
        stderr(&out)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_skeelo-ops"))
        .args(["subscribers"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("DATABASE_URL"), "{}", stderr(&out));

    let out = ops(&w, &["subscribers", "--status", "happy"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("awaiting-sync"),
        "lists the choices: {}",
        stderr(&out)
    );
    w.close().await.expect("cleanup");
}

/// `skeelo-ops user add` with the password on standard input.
fn add_user(w: &World, args: &[&str], password: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_skeelo-ops"))
        .args(args)
        .env("DATABASE_URL", &w.database_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("skeelo-ops runs");
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{password}").expect("the password written");
    }
    child.wait_with_output().expect("skeelo-ops ends")
}

#[tokio::test]
async fn console_accounts_are_managed_with_the_password_on_standard_input() {
    let w = World::new().await.expect("world");
    let short = add_user(&w, &["user", "add", "ana", "--role", "operator"], "short");
    assert!(!short.status.success());
    assert!(
        stderr(&short).contains("at least 10 characters"),
        "{}",
        stderr(&short)
    );
    let added = add_user(
        &w,
        &[
            "user", "add", "ana", "--role", "operator", "--lang", "pt-BR",
        ],
        "a long enough secret",
    );
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(stdout(&added).contains("account ana saved (operator)"));
    let listed = stdout(&ops(&w, &["user", "list"]));
    assert!(
        listed.contains("ana") && listed.contains("operator") && listed.contains("pt-BR"),
        "{listed}"
    );
    assert!(!listed.contains("secret"));
    // The password is kept only as an Argon2id hash.
    let db = w.db().await.expect("db");
    let hash: String = db
        .query_one(
            "SELECT password_hash FROM console_users WHERE name = 'ana'",
            &[],
        )
        .await
        .expect("the account")
        .get(0);
    assert!(hash.starts_with("$argon2id$") && !hash.contains("a long enough secret"));
    let store = skeelo_store::Store::connect(&w.database_url, 1).expect("store");
    let ttl = Duration::from_secs(60);
    assert!(store
        .sign_in("ana", "a long enough secret", ttl)
        .await
        .expect("sign in")
        .is_some());
    assert!(store
        .sign_in("ana", "the wrong secret", ttl)
        .await
        .expect("sign in")
        .is_none());
    assert!(store
        .sign_in("nobody", "a long enough secret", ttl)
        .await
        .expect("sign in")
        .is_none());
    let bad_role = ops(&w, &["user", "add", "bob", "--role", "admin"]);
    assert!(!bad_role.status.success());
    assert!(ops(&w, &["user", "remove", "ana"]).status.success());
    assert!(!ops(&w, &["user", "remove", "ana"]).status.success());
    w.close().await.expect("cleanup");
}
