//! HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), decoded incrementally: bytes are fed as
//! they arrive, split anywhere, and the chunk data comes out as it is read, without waiting
//! for a whole chunk. Chunk extensions and trailer fields are skipped.

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("bad chunk size")]
    BadSize,
    #[error("chunk size too large")]
    SizeTooLarge,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the hex digits of a chunk size.
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension (or whitespace) after the size, up to its CR.
    Extension {
        size: u64,
    },
    /// After the CR of a size line.
    SizeLf {
        size: u64,
    },
    /// In chunk data, `left` bytes to go.
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// In the trailer section after the last chunk; `line_empty` while the current line has
    /// nothing but a possible CR, so that its LF ends the body.
    Trailer {
        line_empty: bool,
    },
    Done,
}

pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl ChunkedDecoder {
    /// Decodes `input`, handing each run of chunk data to `out`. Returns whether the body is
    /// complete (the last chunk and the trailer section were read); input past that is ignored.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut impl FnMut(&[u8]),
    ) -> Result<bool, ChunkedError> {
        while let Some((&byte, rest)) = input.split_first() {
            if let State::Data { left } = self.state {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                out(&input[..take]);
                input = &input[take..];
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            self.state = self.next(byte)?;
            input = rest;
            if self.state == State::Done {
                return Ok(true);
            }
        }
        Ok(self.state == State::Done)
    }

    /// The state after one byte of framing (anything but chunk data).
    fn next(&self, byte: u8) -> Result<State, ChunkedError> {
        Ok(match (self.state, byte) {
            (State::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
                if digits == 15 {
                    return Err(ChunkedError::SizeTooLarge);
                }
                let digit = u64::from((byte as char).to_digit(16).unwrap_or(0));
                State::Size {
                    size: (size << 4) | digit,
                    digits: digits + 1,
                }
            }
            (State::Size { digits: 0, .. }, _) => return Err(ChunkedError::BadSize),
            (State::Size { size, .. }, b'\r') => State::SizeLf { size },
            (State::Size { size, .. }, b';' | b' ' | b'\t') => State::Extension { size },
            (State::Size { .. }, _) => return Err(ChunkedError::BadSize),
            (State::Extension { size }, b'\r') => State::SizeLf { size },
            (State::Extension { size }, _) => State::Extension { size },
            (State::SizeLf { size: 0 }, b'\n') => State::Trailer { line_empty: true },
            (State::SizeLf { size }, b'\n') => State::Data { left: size },
            (State::SizeLf { .. }, _) => return Err(ChunkedError::BadSize),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { size: 0, digits: 0 },
            (State::DataCr | State::DataLf, _) => return Err(ChunkedError::MissingCrlf),
            (State::Trailer { line_empty: true }, b'\n') => State::Done,
            (State::Trailer { .. }, b'\n') => State::Trailer { line_empty: true },
            (State::Trailer { line_empty }, b'\r') => State::Trailer { line_empty },
            (State::Trailer { .. }, _) => State::Trailer { line_empty: false },
            (State::Data { .. } | State::Done, _) => self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in pieces cut at `cuts`; returns the data and whether it completed.
    fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), ChunkedError> {
        let mut decoder = ChunkedDecoder::default();
        let mut data = Vec::new();
        let mut done = false;
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(input.len());
        for cut in cuts {
            done = decoder.feed(&input[start..cut], &mut |d| data.extend_from_slice(d))?;
            start = cut;
        }
        Ok((data, done))
    }

    /// Encodes `chunks` the way hyper does, with a last chunk and an empty trailer.
    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            wire.extend_from_slice(format!("{:X}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    proptest! {
        #[test]
        fn data_comes_out_whole_wherever_the_input_is_cut(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let wire = encode(&chunks);
            let (data, done) = decode_in_pieces(&wire, &cuts).unwrap();
            prop_assert_eq!(data, chunks.concat());
            prop_assert!(done);
        }

        #[test]
        fn a_body_cut_short_is_not_complete(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 1..4),
            cut_back in 1usize..5,
        ) {
            let wire = encode(&chunks);
            let (_, done) = decode_in_pieces(&wire[..wire.len() - cut_back], &[]).unwrap();
            prop_assert!(!done);
        }
    }

    #[test]
    fn extensions_lowercase_sizes_and_trailers_are_accepted() {
        let wire = b"a;name=value\r\n0123456789\r\n3 \r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nignored";
        assert_eq!(
            decode_in_pieces(wire, &[]).unwrap(),
            (b"0123456789abc".to_vec(), true)
        );
    }

    #[test]
    fn broken_framing_is_an_error() {
        let cases: [(&[u8], ChunkedError); 5] = [
            (b"zz\r\n", ChunkedError::BadSize),
            (b"\r\n", ChunkedError::BadSize),
            (b"3\r\nabcX", ChunkedError::MissingCrlf),
            (b"3\rX", ChunkedError::BadSize),
            (b"1000000000000000\r\n", ChunkedError::SizeTooLarge),
        ];
        for (wire, expected) in cases {
            assert_eq!(decode_in_pieces(wire, &[]), Err(expected), "{wire:?}");
        }
    }
}
