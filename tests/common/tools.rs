//! The real client programs tests run against a server (ffmpeg, ffprobe, curl), each on a
//! blocking thread with a time limit so that the runtime stays free for the server.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

/// Runs `program` with `args` on a blocking thread, so the runtime stays free for the server.
pub async fn run(program: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        super::output_within(Command::new(program).args(&args), Duration::from_secs(20))
    })
    .await
    .unwrap()
}

/// Whether the program exited 0 and printed nothing on stderr.
pub fn succeeded(output: &Output) -> bool {
    output.status.success() && output.stderr.is_empty()
}

/// ffprobe's view of the first stream at `url`.
pub async fn probe(url: String) -> Value {
    let args = ["-v", "error", "-show_streams", "-of", "json", &url].map(String::from);
    let output = run("ffprobe", args.to_vec()).await;
    assert!(succeeded(&output), "ffprobe {url}: {output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    report["streams"][0].clone()
}
