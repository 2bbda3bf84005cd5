//! The compressed streams against real servers with real decoders: ffmpeg and ffprobe join
//! each stream while another listener keeps its encoder running (mid-stream), and the FLAC
//! decodes to exactly the samples of `/stream.pcm` and of the source file.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use common::api::{Api, STEP, within};
use pcmcast::encode::f32_to_s24;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Runs `program` with `args` on a blocking thread, so the runtime stays free for the server.
async fn run(program: &'static str, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        common::output_within(Command::new(program).args(&args), Duration::from_secs(20))
    })
    .await
    .unwrap()
}

fn succeeded(output: &Output) -> bool {
    output.status.success() && output.stderr.is_empty()
}

/// ffmpeg's decode of `url` as raw `format` samples (`s32le`, `f32le`).
async fn decode(url: String, format: &str) -> Vec<u8> {
    let args = ["-nostdin", "-v", "error", "-i", &url, "-f", format, "-"].map(String::from);
    let output = run("ffmpeg", args.to_vec()).await;
    assert!(succeeded(&output), "ffmpeg {url}: {output:?}");
    output.stdout
}

/// ffprobe's view of the first stream at `url`.
async fn probe(url: String) -> Value {
    let args = ["-v", "error", "-show_streams", "-of", "json", &url].map(String::from);
    let output = run("ffprobe", args.to_vec()).await;
    assert!(succeeded(&output), "ffprobe {url}: {output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    report["streams"][0].clone()
}

/// Starts a listener of `path` that keeps reading in the background, so that the stream's
/// encoder is running when the test's own listener joins: that one joins mid-stream. Returns
/// once the first listener has its header and a page.
async fn keep_listening(api: &Api, path: &str) -> tokio::task::JoinHandle<()> {
    let response = api.get_ok(path).await;
    let mut body = response.bytes_stream();
    let mut received = 0;
    while received < 2 {
        within(STEP, "the first listener's header and page", body.next())
            .await
            .expect("the stream goes on")
            .unwrap();
        received += 1;
    }
    tokio::spawn(async move { while let Some(Ok(_)) = body.next().await {} })
}

/// Streams `path`'s body into a channel, chunk by chunk, from a task of its own.
async fn collect_in_background(api: &Api, path: &str) -> mpsc::UnboundedReceiver<Bytes> {
    let response = api.get_ok(path).await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = response.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            if tx.send(chunk).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flac_from_a_mid_stream_listener_is_exactly_the_pcm_endpoints_samples() {
    let dir = common::scratch_dir("flac_mid_stream");
    let wav = dir.join("noise24.wav");
    let (rate_hz, channels) = (48_000, 2usize);
    let samples = common::noise(rate_hz as usize * channels, 24, 5);
    common::write_int_wav(&wav, rate_hz, channels as u16, 24, &samples);
    let server = common::start(&["--wav", wav.to_str().unwrap(), "--loop"]).await;
    let api = Api::new(server.addr);

    let first = keep_listening(&api, "/stream.flac").await;
    let mut pcm = collect_in_background(&api, "/stream.pcm?format=f32le").await;
    let header = api.body("/stream.flac?frames=1").await;
    assert_eq!(&header[..4], b"fLaC");
    // After fLaC and STREAMINFO, the first frame: its number (UTF-8 coded) is not 0, since
    // the encoder was running before this listener came.
    assert_eq!(&header[42..44], &[0xFF, 0xF8], "a frame follows the header");
    assert_ne!(header[46], 0, "the listener joined mid-stream");

    let decoded = decode(server.url("/stream.flac?frames=20"), "s32le").await;
    // 24-bit FLAC decodes to s32 with the sample in the top 24 bits.
    let decoded: Vec<i32> = decoded
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) >> 8)
        .collect();
    assert_eq!(decoded.len(), 20 * 1024 * channels);

    // The same samples as /stream.pcm sent for the same frames (a listener since before).
    let mut bytes: Vec<u8> = Vec::new();
    let mut received: Vec<i32> = Vec::new();
    let offset = loop {
        if let Some(offset) = find_run(&received, &decoded, channels) {
            if received.len() >= offset + decoded.len() {
                break offset;
            }
        }
        let chunk = within(STEP, "/stream.pcm reaching the FLAC's samples", pcm.recv())
            .await
            .expect("/stream.pcm goes on");
        // Chunks may end inside a sample: convert whole samples only.
        bytes.extend_from_slice(&chunk);
        let whole = bytes.len() / 4 * 4;
        received.extend(common::f32le(&bytes[..whole]).into_iter().map(f32_to_s24));
        bytes.drain(..whole);
    };
    assert_eq!(
        &received[offset..offset + decoded.len()],
        &decoded[..],
        "FLAC samples equal /stream.pcm's"
    );
    // And the source's own 24-bit samples, exactly.
    let as_f32 = |s: i32| s as f32 / 8_388_608.0;
    let file: Vec<f32> = samples.iter().map(|&s| as_f32(s)).collect();
    let decoded_f32: Vec<f32> = decoded.iter().map(|&s| as_f32(s)).collect();
    let file_offset = common::source_offset(&decoded_f32, &file, channels, true);
    println!(
        "ffmpeg decoded {} FLAC samples joining mid-stream: equal to /stream.pcm's from sample \
         {offset} and to the file's from sample {file_offset}",
        decoded.len()
    );
    first.abort();
    server.stop().await;
}

/// Where `run` starts in `received`, at a sample frame boundary, judged by its first samples.
fn find_run(received: &[i32], run: &[i32], channels: usize) -> Option<usize> {
    let probe = &run[..64];
    let last_start = received.len().checked_sub(probe.len())?;
    (0..=last_start)
        .step_by(channels)
        .find(|&start| &received[start..start + probe.len()] == probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_identifies_the_flac_stream_joining_mid_stream() {
    let server = common::start(&["--tone", "1000", "--rate", "44100", "--channels", "3"]).await;
    let api = Api::new(server.addr);
    let first = keep_listening(&api, "/stream.flac").await;
    let flac = probe(server.url("/stream.flac?frames=20")).await;
    println!(
        "/stream.flac: {} {} Hz {} ch {} bits",
        flac["codec_name"], flac["sample_rate"], flac["channels"], flac["bits_per_raw_sample"]
    );
    assert_eq!(flac["codec_name"], "flac");
    assert_eq!(flac["sample_rate"], "44100");
    assert_eq!(flac["channels"], 3);
    assert_eq!(flac["bits_per_raw_sample"], "24");
    // One encoder, whatever the number of listeners.
    let status = api.status().await;
    let encoders = status["encoders"].as_array().expect("an encoders list");
    assert_eq!(encoders.len(), 1, "{status}");
    assert_eq!(encoders[0]["endpoint"], "flac", "{status}");
    first.abort();
    server.stop().await;
}
