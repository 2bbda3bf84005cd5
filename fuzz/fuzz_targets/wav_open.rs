//! Any bytes given to the WAV-opening path are either refused with an error or opened, and an
//! opened file replays through `Generator::fill`, played once and looped, in whole sample
//! frames, without a panic or a hang.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pcmcast::source::Generator;
use pcmcast::source::wav::open_bytes;

/// Samples pulled from each opened input: enough to play a small file to its end and to loop
/// it several times.
const PULL_SAMPLES: usize = 4096;

/// An odd chunk, so that the ends of the file fall anywhere inside one.
const CHUNK_FRAMES: usize = 37;

fuzz_target!(|bytes: &[u8]| {
    for looping in [false, true] {
        let Ok((info, mut generator)) = open_bytes(bytes.to_vec(), Path::new("fuzz.wav"), looping)
        else {
            return;
        };
        let channels = usize::from(info.format.channels);
        let mut out = vec![0.0f32; CHUNK_FRAMES * channels];
        let mut pulled = 0;
        while pulled < PULL_SAMPLES {
            let written = generator.fill(&mut out);
            assert!(written <= out.len() && written % channels == 0, "{written}");
            pulled += written;
            if written < out.len() {
                // An opened file is complete and held in memory: only a file played once ends.
                assert!(!looping, "a looped file ended after {pulled} samples");
                break;
            }
        }
    }
});
