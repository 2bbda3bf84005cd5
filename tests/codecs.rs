//! The compressed streams, `/stream.flac` and `/stream.opus`, against real servers with real
//! decoders: ffmpeg and ffprobe join each stream while another listener keeps its encoder
//! running (mid-stream), the FLAC decodes to exactly the samples of `/stream.pcm` and of the
//! source file, and the Opus decode of a sine (resampled or not) has its frequency and level.

mod common;

use bytes::Bytes;
use common::api::{Api, STEP, json_error, within};
use common::tools::{probe, run, succeeded};
use pcmcast::encode::f32_to_s24;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// ffmpeg's decode of `url` as raw `format` samples (`s32le`, `f32le`).
async fn decode(url: String, format: &str) -> Vec<u8> {
    let args = ["-nostdin", "-v", "error", "-i", &url, "-f", format, "-"].map(String::from);
    let output = run("ffmpeg", args.to_vec()).await;
    assert!(succeeded(&output), "ffmpeg {url}: {output:?}");
    output.stdout
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

    let first = api.keep_listening("/stream.flac").await;
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
async fn ffprobe_identifies_both_streams_joining_mid_stream() {
    let server = common::start(&["--tone", "1000", "--rate", "44100"]).await;
    let api = Api::new(server.addr);
    let flac_first = api.keep_listening("/stream.flac").await;
    let opus_first = api.keep_listening("/stream.opus").await;
    let flac = probe(server.url("/stream.flac?frames=20")).await;
    println!(
        "/stream.flac: {} {} Hz {} ch {} bits",
        flac["codec_name"], flac["sample_rate"], flac["channels"], flac["bits_per_raw_sample"]
    );
    assert_eq!(flac["codec_name"], "flac");
    assert_eq!(flac["sample_rate"], "44100");
    assert_eq!(flac["channels"], 2);
    assert_eq!(flac["bits_per_raw_sample"], "24");
    let opus = probe(server.url("/stream.opus?frames=20")).await;
    println!(
        "/stream.opus: {} {} Hz {} ch",
        opus["codec_name"], opus["sample_rate"], opus["channels"]
    );
    assert_eq!(opus["codec_name"], "opus");
    assert_eq!(opus["sample_rate"], "48000");
    assert_eq!(opus["channels"], 2);

    // One encoder each, whatever the number of listeners.
    let status = api.status().await;
    let encoders = status["encoders"].as_array().expect("an encoders list");
    assert_eq!(encoders.len(), 2, "{status}");
    assert_eq!(
        status["endpoints"]["flac"]["listeners"]["current"], 1,
        "{status}"
    );
    // Shutdown ends the encoded streams cleanly, and the server stops with them open.
    server.stop().await;
    for first in [flac_first, opus_first] {
        within(STEP, "the first listeners' streams end", first)
            .await
            .unwrap();
    }
}

/// Frequency of a sine by its upward zero crossings (interpolated), and its RMS level in
/// dBFS.
fn frequency_and_level(samples: &[f32], rate_hz: u32) -> (f64, f64) {
    let crossings: Vec<f64> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + f64::from(w[0] / (w[0] - w[1])))
        .collect();
    let periods = (crossings.len() - 1) as f64;
    let hz = periods * f64::from(rate_hz) / (crossings[crossings.len() - 1] - crossings[0]);
    let mean_square = samples
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / samples.len() as f64;
    (hz, 10.0 * mean_square.log10())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_decodes_to_the_tones_frequency_and_level_at_any_source_rate() {
    // The tone is a sine at -6 dBFS peak: -9.03 dBFS RMS.
    let expected_dbfs = 20.0 * (0.5f64 / 2f64.sqrt()).log10();
    for rate_hz in ["44100", "48000", "16000"] {
        let server = common::start(&["--tone", "1000", "--rate", rate_hz]).await;
        let api = Api::new(server.addr);
        let first = api.keep_listening("/stream.opus").await;
        // The header's two pages (sequence 0 and 1), then a page from the running stream.
        let joined = api.body("/stream.opus?frames=1").await;
        let pages = ogg_pages(&joined);
        assert_eq!(&pages[0].3[..8], b"OpusHead");
        assert_eq!(&pages[1].3[..8], b"OpusTags");
        assert_eq!((pages[0].2, pages[1].2), (0, 1));
        assert!(
            pages[2].2 > 2,
            "the listener joined mid-stream: {:?}",
            pages[2]
        );
        // About 0.8 s of audio, whatever the rate.
        let frames = rate_hz.parse::<usize>().unwrap() * 4 / 5 / 1024;
        let decoded = decode(
            server.url(&format!("/stream.opus?frames={frames}")),
            "f32le",
        )
        .await;
        let samples = common::f32le(&decoded);
        // Stereo at 48 kHz, the same in both channels; past the decoder's first 100 ms.
        let left: Vec<f32> = samples.chunks_exact(2).map(|pair| pair[0]).collect();
        let right: Vec<f32> = samples.chunks_exact(2).map(|pair| pair[1]).collect();
        let seconds = left.len() as f64 / 48_000.0;
        for (name, channel) in [("left", &left), ("right", &right)] {
            let (hz, dbfs) = frequency_and_level(&channel[4800..], 48_000);
            println!(
                "{rate_hz} Hz source, {name}: {hz:.2} Hz at {dbfs:.2} dBFS over {seconds:.2} s"
            );
            assert!((hz - 1000.0).abs() < 0.5, "{rate_hz} Hz source: {hz} Hz");
            assert!(
                (dbfs - expected_dbfs).abs() < 0.25,
                "{rate_hz} Hz source: {dbfs} dBFS"
            );
        }
        first.abort();
        server.stop().await;
    }
}

/// The Ogg pages of `bytes`: (header type, granule position, sequence number, body).
fn ogg_pages(mut bytes: &[u8]) -> Vec<(u8, u64, u32, Vec<u8>)> {
    let mut pages = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(&bytes[..4], b"OggS", "a page starts here");
        let segments = usize::from(bytes[26]);
        let body_len: usize = bytes[27..27 + segments]
            .iter()
            .map(|&s| usize::from(s))
            .sum();
        let start = 27 + segments;
        pages.push((
            bytes[5],
            u64::from_le_bytes(bytes[6..14].try_into().unwrap()),
            u32::from_le_bytes(bytes[18..22].try_into().unwrap()),
            bytes[start..start + body_len].to_vec(),
        ));
        bytes = &bytes[start + body_len..];
    }
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitrate_sets_the_opus_rate_and_bad_values_are_refused() {
    let server = common::start(&["--tone", "440"]).await;
    let api = Api::new(server.addr);
    for kbps in [32u64, 128] {
        // 94 frames of 1024 samples at 48 kHz: 2 s, in pages of 100 ms.
        let body = api
            .body(&format!("/stream.opus?bitrate={kbps}&frames=94"))
            .await;
        let audio_pages = ogg_pages(&body).len() - 2;
        let kbit_per_s = body.len() as f64 * 8.0 / (audio_pages as f64 * 0.1) / 1000.0;
        println!(
            "bitrate={kbps}: {} bytes, {audio_pages} pages, {kbit_per_s:.1} kbit/s",
            body.len()
        );
        assert!(
            (kbit_per_s / kbps as f64 - 1.0).abs() < 0.25,
            "asked {kbps} kbit/s, got {kbit_per_s:.1}"
        );
    }
    for bad in ["95", "96k", "0", "x"] {
        let message = json_error(api.get(&format!("/stream.opus?bitrate={bad}")).await, 400).await;
        assert!(message.contains("'bitrate'"), "{message}");
    }
    let message = json_error(api.get("/stream.flac?bitrate=96").await, 400).await;
    assert!(message.contains("unknown parameter 'bitrate'"), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn opus_refuses_more_than_two_channels_and_flac_takes_them() {
    let server = common::start(&["--tone", "440", "--channels", "3"]).await;
    let api = Api::new(server.addr);
    let message = json_error(api.get("/stream.opus").await, 501).await;
    assert!(message.contains("1 or 2 channels"), "{message}");
    let status = api.status().await;
    assert_eq!(
        status["endpoints"]["opus"]["listeners"]["total"], 0,
        "{status}"
    );
    let flac = api.body("/stream.flac?frames=2").await;
    assert_eq!(&flac[..4], b"fLaC");
    server.stop().await;
}

/// Interleaves one vector per channel.
fn interleave(channels: &[Vec<f32>]) -> Vec<f32> {
    (0..channels[0].len())
        .flat_map(|i| channels.iter().map(move |c| c[i]))
        .collect()
}

/// Every kind of subframe and channel coding the FLAC encoder makes (constant, verbatim,
/// fixed, LPC, wasted bits; left/side, side/right, mid/side, independent; mono and three
/// channels; full-scale clipping; a short last block; block sizes with and without their own
/// header code) decodes in ffmpeg to exactly the 24-bit samples it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_decodes_every_kind_of_flac_subframe_exactly() {
    use pcmcast::codec::flac::FlacEncoder;
    use pcmcast::frame::StreamFormat;

    let dir = common::scratch_dir("flac_subframes");
    let len = 12_345;
    let sine = |hz: f64, amplitude: f64| -> Vec<f32> {
        (0..len)
            .map(|i| {
                (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin()) as f32
            })
            .collect()
    };
    let noise: Vec<f32> = common::noise(len, 24, 3)
        .into_iter()
        .map(|s| s as f32 / 8_388_608.0)
        .collect();
    let sixteen_bit: Vec<f32> = common::noise(len, 16, 4)
        .into_iter()
        .zip(sine(220.0, 0.6))
        .map(|(n, s)| ((s * 32_768.0).round() + (n >> 6) as f32) / 32_768.0)
        .collect();
    let mut click = vec![0.0f32; len];
    click[5_000] = 1.0;
    let square: Vec<f32> = (0..len)
        .map(|i| if i / 60 % 2 == 0 { 1.5 } else { -1.5 })
        .collect();
    let signals: Vec<(&str, Vec<Vec<f32>>)> = vec![
        (
            "correlated sines",
            vec![sine(440.0, 0.5), sine(440.0, 0.45)],
        ),
        ("left only", vec![sine(1000.0, 0.7), vec![0.0; len]]),
        ("right only", vec![vec![0.0; len], sine(300.0, 0.3)]),
        (
            "16-bit material",
            vec![sixteen_bit.clone(), sine(523.0, 0.2)],
        ),
        ("silence and a click", vec![click.clone(), vec![0.0; len]]),
        ("clipped square", vec![square.clone(), square]),
        ("24-bit noise", vec![noise.clone(), sine(50.0, 0.001)]),
        ("mono", vec![sixteen_bit]),
        ("three channels", vec![sine(100.0, 0.9), noise, click]),
    ];
    for frame_size in [1024usize, 100, 4608] {
        for (name, channels) in &signals {
            let format = StreamFormat {
                rate_hz: 48_000,
                channels: channels.len() as u16,
            };
            let samples = interleave(channels);
            let mut encoder = FlacEncoder::new(format, frame_size).unwrap();
            let mut pages = Vec::new();
            for frame in samples.chunks(frame_size * channels.len()) {
                encoder.push(frame, &mut pages);
            }
            encoder.finish(&mut pages);
            let mut bytes = encoder.header().to_vec();
            bytes.extend(pages.iter().flat_map(|page| page.bytes.iter().copied()));
            let path = dir.join(format!("{frame_size}-{}.flac", name.replace(' ', "-")));
            std::fs::write(&path, &bytes).unwrap();
            let decoded = decode(path.to_str().unwrap().to_owned(), "s32le").await;
            let decoded: Vec<i32> = decoded
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) >> 8)
                .collect();
            let expected: Vec<i32> = samples.iter().map(|&s| f32_to_s24(s)).collect();
            assert!(
                decoded == expected,
                "{name}, frame size {frame_size}: not exact"
            );
            let bits_per_sample = bytes.len() as f64 * 8.0 / samples.len() as f64;
            println!("{name}, blocks of {frame_size}: exact, {bits_per_sample:.2} bits/sample");
        }
    }
}
