//! The clients the README documents, as real processes against a real server: ffprobe
//! identifies the WAV stream, ffmpeg decodes it to the file's own samples, and curl gets
//! exactly the frames it asks for.

mod common;

use common::tools::{probe, run, succeeded};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffprobe_identifies_the_wav_stream() {
    let formats = [(44_100u32, 1u16), (48_000, 2)];
    let mut servers = Vec::new();
    let mut probes = tokio::task::JoinSet::new();
    for (rate_hz, channels) in formats {
        let server = common::start_line(&format!(
            "--tone 1000 --rate {rate_hz} --channels {channels}"
        ))
        .await;
        for (query, codec, bits) in [("", "pcm_s16le", 16), ("?format=f32le", "pcm_f32le", 32)] {
            let url = server.url(&format!("/stream.wav{query}"));
            probes.spawn(async move {
                let stream = probe(url.clone()).await;
                println!(
                    "{url}: {} {} Hz {} ch {} bits",
                    stream["codec_name"],
                    stream["sample_rate"],
                    stream["channels"],
                    stream["bits_per_sample"]
                );
                assert_eq!(stream["codec_type"], "audio", "{url}");
                assert_eq!(stream["codec_name"], codec, "{url}");
                assert_eq!(stream["sample_rate"], rate_hz.to_string(), "{url}");
                assert_eq!(stream["channels"], channels, "{url}");
                assert_eq!(stream["bits_per_sample"], bits, "{url}");
            });
        }
        servers.push(server);
    }
    while let Some(joined) = probes.join_next().await {
        if let Err(error) = joined {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_decodes_the_wav_stream_to_the_files_samples() {
    let dir = common::scratch_dir("ffmpeg_decodes_the_wav_stream");
    let wav = dir.join("noise.wav");
    let (rate_hz, channels, frame_size, frames) = (44_100, 2, 512, 40);
    let samples = common::noise(rate_hz as usize * 3 / 10 * channels, 16, 11);
    common::write_int_wav(&wav, rate_hz, channels as u16, 16, &samples);
    let server = common::start(&[
        "--wav",
        wav.to_str().unwrap(),
        "--loop",
        "--frame-size",
        &frame_size.to_string(),
    ])
    .await;

    let url = server.url(&format!("/stream.wav?frames={frames}"));
    let args = ["-nostdin", "-v", "error", "-i", &url, "-f", "s16le", "-"].map(String::from);
    let output = run("ffmpeg", args.to_vec()).await;
    assert!(succeeded(&output), "ffmpeg: {output:?}");
    assert_eq!(output.stdout.len(), frames * frame_size * channels * 2);
    // i16 → f32 by 2^-15 is exact and one-to-one, so comparing f32 bits compares the i16s.
    let as_f32 = |s: i16| f32::from(s) / 32_768.0;
    let decoded: Vec<f32> = output
        .stdout
        .chunks_exact(2)
        .map(|b| as_f32(i16::from_le_bytes([b[0], b[1]])))
        .collect();
    let file: Vec<f32> = samples.iter().map(|&s| as_f32(s as i16)).collect();
    let offset = common::source_offset(&decoded, &file, channels, true);
    println!(
        "ffmpeg decoded {} samples, equal to the file's from sample {offset} on ({:.2} passes)",
        decoded.len(),
        decoded.len() as f64 / file.len() as f64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_prints_exactly_the_json_lines_asked_for() {
    let (rate_hz, channels, frame_size) = (16_000, 2, 160);
    let server = common::start_line(&format!(
        "--tone 440 --rate {rate_hz} --channels {channels} --frame-size {frame_size}"
    ))
    .await;
    let url = server.url("/stream.ndjson?frames=5");
    let output = run("curl", vec!["-sN".into(), url]).await;
    assert!(succeeded(&output), "curl: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.ends_with('\n'), "{text}");
    let frames: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON object"))
        .collect();
    assert_eq!(frames.len(), 5, "{text}");
    let first_seq = frames[0]["seq"].as_u64().unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let seq = first_seq + i as u64;
        assert_eq!(frame["seq"], seq);
        assert_eq!(frame["pts"], seq * frame_size);
        assert_eq!(frame["rate"], rate_hz);
        assert_eq!(frame["channels"], channels);
        let samples = frame["samples"].as_array().unwrap();
        assert_eq!(samples.len() as u64, frame_size * channels);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_counts_exactly_n_frames_of_pcm_over_http_1_1_and_1_0() {
    let (channels, frame_size, frames) = (3usize, 441usize, 7usize);
    let server = common::start_line(&format!(
        "--tone 1000 --rate 22050 --channels {channels} --frame-size {frame_size}"
    ))
    .await;
    // (path and query, bytes per sample, header bytes)
    let streams = [
        (format!("/stream.pcm?frames={frames}"), 4, 0),
        (format!("/stream.pcm?frames={frames}&format=s16le"), 2, 0),
        (format!("/stream.wav?frames={frames}"), 2, 44),
        (format!("/stream.wav?frames={frames}&format=f32le"), 4, 44),
    ];
    let mut counts = tokio::task::JoinSet::new();
    // HTTP/1.1 bodies are chunked; HTTP/1.0 ones end when the server closes the connection.
    for version in ["--http1.1", "--http1.0"] {
        for (path, bytes_per_sample, header) in streams.clone() {
            let url = server.url(&path);
            counts.spawn(async move {
                let output = run("curl", vec!["-sN".into(), version.into(), url]).await;
                assert!(succeeded(&output), "curl {version} {path}: {output:?}");
                let expected = header + frames * frame_size * channels * bytes_per_sample;
                println!("curl {version} {path}: {} bytes", output.stdout.len());
                assert_eq!(output.stdout.len(), expected, "{version} {path}");
            });
        }
    }
    while let Some(joined) = counts.join_next().await {
        if let Err(error) = joined {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    server.stop().await;
}
