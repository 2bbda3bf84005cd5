//! Query parameters of the stream endpoints, parsed strictly: an unknown, repeated or malformed
//! parameter is a 400 that names it, never silently ignored.
//!
//! Names and values are percent-decoded, and bytes that are not UTF-8 become U+FFFD (`%FF` reads
//! as `\u{FFFD}`). So a `format` or `frames` value that is not UTF-8 is never a valid one, and an
//! error about a name that is not UTF-8 quotes the name in that lossy form.

use crate::codec::opus;
use crate::encode::PcmFormat;

use super::AppError;

/// `F` is what `format=` means: PCM formats for most endpoints, `/ws` has its own.
#[derive(Debug, PartialEq)]
pub struct StreamParams<F = PcmFormat> {
    pub format: Option<F>,
    /// End the stream after this many frames.
    pub frames: Option<u64>,
    /// `/stream.opus`: the bitrate in kbit/s, one of [`opus::BITRATES_KBPS`].
    pub bitrate_kbps: Option<u32>,
}

// By hand: derived, it would require `F: Default`.
impl<F> Default for StreamParams<F> {
    fn default() -> Self {
        StreamParams {
            format: None,
            frames: None,
            bitrate_kbps: None,
        }
    }
}

/// Taken by every endpoint and ignored here: `access` has checked it before any handler runs.
const TOKEN: &str = "token";

/// Parses `query`, accepting only the parameters named in `allowed`, and `token`.
pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<StreamParams, AppError> {
    parse_with(query, allowed, parse_format)
}

/// Like [`parse`], for an endpoint whose `format=` values are its own: `parse_format` reads
/// them and names the accepted values in its error.
pub fn parse_with<F>(
    query: Option<&str>,
    allowed: &[&str],
    parse_format: impl Fn(&str) -> Result<F, AppError>,
) -> Result<StreamParams<F>, AppError> {
    let mut params = StreamParams::default();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name != TOKEN && !allowed.contains(&name.as_ref()) {
            let takes: Vec<&str> = allowed.iter().copied().chain([TOKEN]).collect();
            return Err(AppError::BadParameter(format!(
                "unknown parameter '{name}' (this endpoint takes: {})",
                takes.join(", ")
            )));
        }
        if seen.iter().any(|s| *s == name) {
            return Err(AppError::BadParameter(format!(
                "parameter '{name}' is given more than once"
            )));
        }
        match name.as_ref() {
            "format" => params.format = Some(parse_format(&value)?),
            "frames" => params.frames = Some(parse_frames(&value)?),
            "bitrate" => params.bitrate_kbps = Some(parse_bitrate(&value)?),
            TOKEN => {}
            _ => unreachable!("every allowed parameter is handled"),
        }
        seen.push(name.into_owned());
    }
    Ok(params)
}

fn parse_format(value: &str) -> Result<PcmFormat, AppError> {
    PcmFormat::parse(value).ok_or_else(|| {
        AppError::BadParameter(format!(
            "unknown format '{value}' for parameter 'format' (use f32le or s16le)"
        ))
    })
}

/// Decimal digits only: `u64::from_str` would also take a leading `+`.
fn parse_frames(value: &str) -> Result<u64, AppError> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u64>() {
        Ok(n) if digits && n > 0 => Ok(n),
        _ => Err(AppError::BadParameter(format!(
            "parameter 'frames' must be a whole number of frames from 1 to {}, got '{value}'",
            u64::MAX
        ))),
    }
}

/// kbit/s, one of the offered bitrates.
fn parse_bitrate(value: &str) -> Result<u32, AppError> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u32>() {
        Ok(kbps) if digits && opus::BITRATES_KBPS.contains(&kbps) => Ok(kbps),
        _ => {
            let offered: Vec<String> = opus::BITRATES_KBPS.iter().map(u32::to_string).collect();
            Err(AppError::BadParameter(format!(
                "parameter 'bitrate' must be one of {} (kbit/s), got '{value}'",
                offered.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCM: &[&str] = &["format", "frames"];
    const OPUS: &[&str] = &["bitrate", "frames"];

    fn error(query: &str, allowed: &[&str]) -> String {
        parse(Some(query), allowed).unwrap_err().to_string()
    }

    #[test]
    fn good_queries_parse() {
        assert_eq!(parse(None, PCM).unwrap(), StreamParams::default());
        assert_eq!(
            parse(Some("format=s16le&frames=5"), PCM).unwrap(),
            StreamParams {
                format: Some(PcmFormat::S16le),
                frames: Some(5),
                bitrate_kbps: None,
            }
        );
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        assert!(error("format=mp3", PCM).contains("'format'"));
        assert!(error("frames=-1", PCM).contains("'frames'"));
        assert!(error("frames=0", PCM).contains("'frames'"));
        assert!(error("frames=%2B5", PCM).contains("'frames'"));
        assert!(error("frames=+5", PCM).contains("'frames'"));
        assert!(error("frames=99999999999999999999999", PCM).contains("'frames'"));
        assert!(error("frames=1&frames=2", PCM).contains("more than once"));
        assert!(error("volume=11", PCM).contains("unknown parameter 'volume'"));
        assert!(error("format=s16le", &["frames"]).contains("unknown parameter 'format'"));
        assert!(error("format=%FF", PCM).contains("'format'"));
        assert!(error("frames=%FF", PCM).contains("'frames'"));
        assert!(error("%FF%FE=1", PCM).contains("unknown parameter '\u{FFFD}\u{FFFD}'"));
        for bad in ["95", "96k", "+96", "96000", "", "-1"] {
            let message = error(&format!("bitrate={bad}"), OPUS);
            assert!(
                message.contains("'bitrate' must be one of 32, 48"),
                "{bad}: {message}"
            );
        }
        assert!(error("bitrate=96", PCM).contains("unknown parameter 'bitrate'"));
    }

    #[test]
    fn bitrate_takes_the_offered_values() {
        for kbps in opus::BITRATES_KBPS {
            let query = format!("bitrate={kbps}&frames=2");
            assert_eq!(parse(Some(&query), OPUS).unwrap().bitrate_kbps, Some(kbps));
        }
    }

    #[test]
    fn every_endpoint_takes_a_token_and_ignores_its_value() {
        for allowed in [PCM, &["frames"], &[]] {
            assert_eq!(
                parse(Some("token=anything%20at%20all"), allowed).unwrap(),
                StreamParams::default()
            );
        }
        assert_eq!(
            parse(Some("frames=3&token=t&format=s16le"), PCM).unwrap(),
            StreamParams {
                format: Some(PcmFormat::S16le),
                frames: Some(3),
                bitrate_kbps: None,
            }
        );
        assert!(error("token=a&token=b", PCM).contains("more than once"));
        assert!(error("volume=11", &["frames"]).contains("takes: frames, token)"));
        assert!(error("volume=11", &[]).contains("takes: token)"));
    }
}
