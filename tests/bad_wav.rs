//! Bad WAV input through the real binary: every file in `tests/corpus/bad-wav` and every path
//! that is not a readable regular file (a directory, a FIFO, a device, a dangling link…) makes
//! `pcmcast --wav` exit non-zero with exactly one line, naming the path and the problem: no
//! panic, no hang. The corpus files are made by `corpus()` below, and also seed the fuzzer
//! (scripts/fuzz).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A broken file of the corpus and what the error line must say about it.
struct BadFile {
    name: &'static str,
    problem: &'static str,
    bytes: Vec<u8>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-wav")
}

/// A chunk with its id, the length it declares, and its body.
fn chunk(id: &[u8; 4], declared_len: u32, body: &[u8]) -> Vec<u8> {
    [&id[..], &declared_len.to_le_bytes(), body].concat()
}

fn data(body: &[u8]) -> Vec<u8> {
    chunk(b"data", body.len() as u32, body)
}

/// A RIFF WAVE file made of `chunks`, its RIFF size true.
fn riff(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body = [b"WAVE".to_vec(), chunks.concat()].concat();
    chunk(b"RIFF", body.len() as u32, &body)
}

/// A 16-byte `fmt ` chunk whose byte rate is the one the other fields imply.
fn fmt(tag: u16, channels: u16, rate_hz: u32, block_align: u16, bits: u16) -> Vec<u8> {
    let byte_rate = rate_hz.wrapping_mul(block_align.into());
    fmt_with_byte_rate(tag, channels, rate_hz, byte_rate, block_align, bits)
}

fn fmt_with_byte_rate(
    tag: u16,
    channels: u16,
    rate_hz: u32,
    byte_rate: u32,
    block_align: u16,
    bits: u16,
) -> Vec<u8> {
    let body = [
        &tag.to_le_bytes()[..],
        &channels.to_le_bytes(),
        &rate_hz.to_le_bytes(),
        &byte_rate.to_le_bytes(),
        &block_align.to_le_bytes(),
        &bits.to_le_bytes(),
    ]
    .concat();
    chunk(b"fmt ", 16, &body)
}

/// A 40-byte WAVE_FORMAT_EXTENSIBLE `fmt ` chunk for integer PCM, mono at 8 kHz, whose
/// `valid_bits` may differ from its container's width.
fn extensible_fmt(block_align: u16, bits: u16, valid_bits: u16) -> Vec<u8> {
    const SUBTYPE_PCM: [u8; 16] = [
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B,
        0x71,
    ];
    let mut fmt = fmt(0xFFFE, 1, 8_000, block_align, bits);
    fmt[4..8].copy_from_slice(&40u32.to_le_bytes());
    fmt.extend_from_slice(&22u16.to_le_bytes());
    fmt.extend_from_slice(&valid_bits.to_le_bytes());
    fmt.extend_from_slice(&4u32.to_le_bytes());
    fmt.extend_from_slice(&SUBTYPE_PCM);
    fmt
}

fn mono_16_bit() -> Vec<u8> {
    fmt(1, 1, 8_000, 2, 16)
}

/// Samples that are not silence, so that nothing could pass for a blank file.
fn samples(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 37 % 251) as u8).collect()
}

/// Every file of the corpus, made from scratch.
fn corpus() -> Vec<BadFile> {
    let valid = riff(&[mono_16_bit(), data(&samples(200))]);
    let file = |name, problem, bytes| BadFile {
        name,
        problem,
        bytes,
    };
    vec![
        file("empty.wav", "it is empty (0 bytes)", vec![]),
        file(
            "riff-only.wav",
            "it ends inside its header",
            b"RIFF\x24\x00".to_vec(),
        ),
        file(
            "header-cut-in-fmt.wav",
            "it ends inside its header",
            valid[..30].to_vec(),
        ),
        file(
            "no-data-chunk.wav",
            "it ends inside its header",
            riff(&[mono_16_bit()]),
        ),
        file(
            "id3-mp3.wav",
            "no RIFF tag found",
            [
                &b"ID3\x04\x00\x00\x00\x00\x00\x00\xFF\xFB\x90\x64"[..],
                &samples(50),
            ]
            .concat(),
        ),
        file(
            "rifx-big-endian.wav",
            "no RIFF tag found",
            [&b"RIFX"[..], &valid[4..]].concat(),
        ),
        file(
            "riff-avi.wav",
            "no WAVE tag found",
            chunk(b"RIFF", 16, b"AVI LIST\x04\x00\x00\x00hdrl"),
        ),
        file(
            "data-before-fmt.wav",
            "missing fmt chunk",
            riff(&[data(&samples(20)), mono_16_bit()]),
        ),
        file(
            "fmt-too-short.wav",
            "invalid fmt chunk size",
            riff(&[
                chunk(b"fmt ", 14, &mono_16_bit()[8..22]),
                data(&samples(20)),
            ]),
        ),
        file(
            "short-data.wav",
            "its data chunk declares 400 bytes but the file holds 200",
            riff(&[mono_16_bit(), chunk(b"data", 400, &samples(200))]),
        ),
        file(
            "huge-data-size.wav",
            "its data chunk declares 4294967294 bytes but the file holds 8",
            riff(&[mono_16_bit(), chunk(b"data", 0xFFFF_FFFE, &samples(8))]),
        ),
        file(
            "huge-chunk-size.wav",
            "it ends inside its header",
            riff(&[
                chunk(b"LIST", 0xFFFF_FFFF, &samples(16)),
                mono_16_bit(),
                data(&samples(20)),
            ]),
        ),
        file(
            "huge-rate.wav",
            "its sample rate is 4000000000 Hz",
            riff(&[fmt(1, 1, 4_000_000_000, 1, 8), data(&samples(64))]),
        ),
        file(
            "zero-hz.wav",
            "its sample rate is 0 Hz",
            riff(&[fmt(1, 1, 0, 2, 16), data(&samples(20))]),
        ),
        file(
            "zero-channels.wav",
            "file contains zero channels",
            riff(&[fmt(1, 0, 8_000, 2, 16), data(&samples(20))]),
        ),
        file(
            "33-channels.wav",
            "33 channels",
            riff(&[fmt(1, 33, 8_000, 66, 16), data(&samples(66))]),
        ),
        file(
            "inconsistent-byte-rate.wav",
            "inconsistent fmt chunk",
            riff(&[
                fmt_with_byte_rate(1, 1, 8_000, 8_000, 2, 16),
                data(&samples(20)),
            ]),
        ),
        file(
            "odd-data-size.wav",
            "data chunk length is not a multiple of sample size",
            riff(&[mono_16_bit(), data(&samples(201))]),
        ),
        file(
            "half-frame-data.wav",
            "invalid data chunk length",
            riff(&[fmt(1, 2, 8_000, 4, 16), data(&samples(202))]),
        ),
        file(
            "bits-exceed-block-align.wav",
            "sample bits exceeds size of sample",
            riff(&[fmt(1, 1, 8_000, 2, 32), data(&samples(20))]),
        ),
        file(
            "12-bit.wav",
            "bits per sample is not a multiple of 8",
            riff(&[fmt(1, 1, 8_000, 2, 12), data(&samples(20))]),
        ),
        file(
            "12-in-16-extensible.wav",
            "12-bit integer samples in 2-byte containers are not supported",
            riff(&[extensible_fmt(2, 16, 12), data(&samples(20))]),
        ),
        file(
            "32-in-16-extensible.wav",
            "32-bit integer samples in 2-byte containers are not supported",
            riff(&[extensible_fmt(2, 16, 32), data(&samples(20))]),
        ),
        file(
            "16-in-32.wav",
            "16-bit integer samples in 4-byte containers are not supported",
            riff(&[fmt(1, 1, 8_000, 4, 16), data(&samples(40))]),
        ),
        file(
            "float64.wav",
            "bits per sample is not 32",
            riff(&[fmt(3, 1, 8_000, 8, 64), data(&samples(64))]),
        ),
        file(
            "adpcm.wav",
            "its sample encoding is not supported",
            riff(&[fmt(2, 1, 8_000, 2, 16), data(&samples(20))]),
        ),
        file(
            "no-samples.wav",
            "it contains no audio samples",
            riff(&[fmt(1, 2, 8_000, 4, 16), data(&[])]),
        ),
    ]
}

/// Runs `pcmcast --wav path` and checks that it exits non-zero within 10 s with exactly one
/// line on stderr, the error, naming `path` and containing `problem`. Returns that line, or
/// what is wrong.
fn check_refused(path: &Path, problem: &str) -> Result<String, String> {
    let path = path.to_str().expect("a UTF-8 test path");
    let output = common::output_within(
        Command::new(common::binary())
            .args(["--wav", path, "--bind", "127.0.0.1:0"])
            .env_remove("RUST_LOG"),
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let fail = |why: &str| {
        Err(format!(
            "--wav {path}: {why}; {:?}, stderr:\n{stderr}",
            output.status
        ))
    };
    if output.status.success() || output.status.code().is_none() {
        return fail("must exit by itself with a non-zero status");
    }
    if stderr.contains("panicked") {
        return fail("panicked");
    }
    let [line] = stderr.lines().collect::<Vec<_>>()[..] else {
        return fail("must print exactly one line");
    };
    if !line.starts_with("pcmcast: error: ") || !line.contains(path) || !line.contains(problem) {
        return fail(&format!(
            "the error line must name the path and say {problem:?}"
        ));
    }
    Ok(line.to_owned())
}

/// Checks every (path, problem) at once and fails with all that went wrong.
fn assert_all_refused(cases: &[(PathBuf, &str)]) {
    common::check_all(cases, |(path, problem)| check_refused(path, problem));
}

/// The committed files are exactly what `corpus()` makes, each at most a few hundred bytes, and
/// the README lists them all. With `PCMCAST_WRITE_CORPUS=1`, (re)writes them first.
#[test]
fn the_corpus_files_are_the_ones_corpus_makes() {
    let dir = corpus_dir();
    let corpus = corpus();
    if std::env::var_os("PCMCAST_WRITE_CORPUS").is_some() {
        for file in &corpus {
            std::fs::write(dir.join(file.name), &file.bytes).unwrap();
        }
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for file in &corpus {
        let committed = std::fs::read(dir.join(file.name))
            .unwrap_or_else(|e| panic!("{}: {e} (PCMCAST_WRITE_CORPUS=1 writes it)", file.name));
        assert!(
            committed == file.bytes,
            "{} differs from what corpus() makes (PCMCAST_WRITE_CORPUS=1 rewrites it)",
            file.name
        );
        assert!(file.bytes.len() <= 512, "{} is small", file.name);
        assert!(
            readme.contains(&format!("`{}`", file.name)),
            "README.md lists {}",
            file.name
        );
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "README.md" || corpus.iter().any(|file| file.name == name),
            "{name} is in the corpus directory but not in corpus(): add it there with its problem"
        );
    }
}

#[test]
fn every_corpus_file_is_refused_with_one_line_that_names_it_and_the_problem() {
    let dir = corpus_dir();
    let cases: Vec<(PathBuf, &str)> = corpus()
        .into_iter()
        .map(|file| (dir.join(file.name), file.problem))
        .collect();
    assert_all_refused(&cases);
}

#[test]
fn paths_that_are_not_readable_regular_files_are_refused_with_one_line() {
    let dir = common::scratch_dir("paths_that_are_not_readable_regular_files");
    let valid = dir.join("valid.wav");
    common::write_int_wav(&valid, 8_000, 1, 16, &common::noise(800, 16, 1));
    let fifo = dir.join("fifo.wav");
    let mkfifo = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(mkfifo.success());
    let socket = dir.join("socket.wav");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let link = |name: &str, target: &Path| {
        let path = dir.join(name);
        std::os::unix::fs::symlink(target, &path).unwrap();
        path
    };
    let cases = [
        // Opening a FIFO for reading would wait for a writer that never comes.
        (
            fifo.clone(),
            "it is a named pipe (FIFO), not a regular file",
        ),
        (
            link("link-to-fifo.wav", &fifo),
            "it is a named pipe (FIFO), not a regular file",
        ),
        // Devices that never end.
        (
            PathBuf::from("/dev/zero"),
            "it is a character device, not a regular file",
        ),
        (
            PathBuf::from("/dev/urandom"),
            "it is a character device, not a regular file",
        ),
        (socket, "it is a socket, not a regular file"),
        (dir.clone(), "it is a directory, not a regular file"),
        // A pseudo-file: regular, of size 0, and text when read.
        (PathBuf::from("/proc/self/status"), "it is empty (0 bytes)"),
        // Unreadable even by root, who may read any file whatever its permissions.
        (dir.join("missing.wav"), "No such file or directory"),
        (
            link("dangling.wav", &dir.join("missing.wav")),
            "No such file or directory",
        ),
        (
            link("loop.wav", &dir.join("loop.wav")),
            "Too many levels of symbolic links",
        ),
        (valid.join("x.wav"), "Not a directory"),
    ];
    assert_all_refused(&cases);
}
