//! A stop is a stop, whatever the broker does: `skeelo-workers` started with its
//! broker unreachable says so in its logs (with the address, never the password), and
//! SIGTERM ends it within ten seconds with status 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use skeelo_tests::process::{free_port, WorkerProcess};
use skeelo_tests::World;

#[tokio::test]
async fn sigterm_with_the_broker_unreachable_exits_at_once_and_cleanly() {
    let w = World::new().await.expect("world");
    let port = free_port().expect("a free port");
    let url = format!("amqp://guest:s3cr3t-pass@127.0.0.1:{port}/%2f");
    let log = std::env::temp_dir().join(format!("skeelo-stop-{}.log", uuid::Uuid::new_v4()));
    let file = std::fs::File::create(&log).expect("log file");
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_skeelo-workers"));
    let env = [("AMQP_URL", url.as_str()), ("RUST_LOG", "info")];
    let worker = WorkerProcess::spawn(binary, &w, &env, Stdio::from(file))
        .await
        .expect("the process starts");
    // It says it cannot reach the broker, naming it, soon.
    let named = format!("amqp://guest:***@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&named)
    {
        assert!(
            Instant::now() < deadline,
            "the unreachable broker was never named"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let asked = Instant::now();
    let status = worker.stop().expect("stopped");
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status:?} after {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");

    let logs = std::fs::read_to_string(&log).expect("logs");
    let _ = std::fs::remove_file(&log);
    assert!(
        !logs.contains("s3cr3t-pass"),
        "the password never reaches a log"
    );
    w.close().await.expect("cleanup");
}
