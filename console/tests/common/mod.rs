//! What the console's tests share: a console process on a free port against a test
//! world, and a signed-in HTTP session for requests a browser would not send.
// Each test file uses its own part of these helpers.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skeelo_tests::World;

pub const WAIT: Duration = Duration::from_secs(30);
pub const PASSWORD: &str = "correct horse battery";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A process killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_http(url: &str) {
    let deadline = Instant::now() + WAIT;
    while reqwest::get(url).await.is_err() {
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The console binary on a free port, its log in `log`.
pub async fn console(w: &World, log: &Path) -> (Running, String) {
    console_with(w, log, &[]).await
}

/// The console command, reading `w`'s environment and `extra` on top.
pub fn console_command(w: &World, extra: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skeelo-console"));
    command
        .envs(w.env())
        .env("SKEELO_RATE_PER_SECOND", "50")
        .env("RUST_LOG", "debug")
        .envs(extra.iter().copied());
    command
}

/// The console binary on a free port with `extra` settings, its log in `log`.
pub async fn console_with(w: &World, log: &Path, extra: &[(&str, &str)]) -> (Running, String) {
    let port = free_port();
    let child = console_command(w, extra)
        .env("SKEELO_CONSOLE_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("a log file"))
        .spawn()
        .expect("skeelo-console starts");
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/healthz")).await;
    (Running(child), base)
}

/// A signed-in HTTP session (no browser), for requests a browser would not send. The
/// cookie is carried by hand: it is `Secure`, which a cookie jar keeps off plain HTTP.
pub struct Http {
    client: reqwest::Client,
    base: String,
    cookie: String,
}

impl Http {
    pub async fn sign_in(base: &str, name: &str) -> Http {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client");
        let r = client
            .post(format!("{base}/login"))
            .form(&[("name", name), ("password", PASSWORD)])
            .send()
            .await
            .expect("signed in");
        let cookie = r
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .to_string();
        assert!(
            cookie.starts_with("__Host-skeelo_console="),
            "{}",
            r.status()
        );
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
            let set = r
                .headers()
                .get(reqwest::header::SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(set.contains(attribute), "{set}");
        }
        Http {
            client,
            base: base.to_string(),
            cookie,
        }
    }

    pub async fn fetch(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
            .send()
            .await
            .expect("an answer")
    }

    pub async fn get(&self, path: &str) -> String {
        self.fetch(path).await.text().await.expect("a page")
    }

    pub async fn headers(&self, path: &str) -> reqwest::header::HeaderMap {
        self.fetch(path).await.headers().clone()
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::StatusCode {
        self.client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::COOKIE, &self.cookie)
            .form(form)
            .send()
            .await
            .expect("an answer")
            .status()
    }
}

pub fn csrf_of(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string()
}
