//! Query parameters of the stream endpoints, parsed strictly: an unknown, repeated or malformed
//! parameter is a 400 that names it, never silently ignored.

use crate::encode::PcmFormat;

use super::AppError;

#[derive(Debug, Default, PartialEq)]
pub struct StreamParams {
    pub format: Option<PcmFormat>,
    /// End the stream after this many frames.
    pub frames: Option<u64>,
}

/// Parses `query`, accepting only the parameters named in `allowed`.
pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<StreamParams, AppError> {
    let mut params = StreamParams::default();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(AppError::BadParameter(format!(
                "unknown parameter '{name}' (this endpoint takes: {})",
                allowed.join(", ")
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

fn parse_frames(value: &str) -> Result<u64, AppError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(AppError::BadParameter(format!(
            "parameter 'frames' must be a whole number of frames from 1 to {}, got '{value}'",
            u64::MAX
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCM: &[&str] = &["format", "frames"];

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
                frames: Some(5)
            }
        );
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        assert!(error("format=mp3", PCM).contains("'format'"));
        assert!(error("frames=-1", PCM).contains("'frames'"));
        assert!(error("frames=0", PCM).contains("'frames'"));
        assert!(error("frames=99999999999999999999999", PCM).contains("'frames'"));
        assert!(error("frames=1&frames=2", PCM).contains("more than once"));
        assert!(error("volume=11", PCM).contains("unknown parameter 'volume'"));
        assert!(error("format=s16le", &["frames"]).contains("unknown parameter 'format'"));
        assert!(error("format=%FF", PCM).contains("'format'"));
    }
}
