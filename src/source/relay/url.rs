//! The `--relay` URL: `http://HOST[:PORT][/PATH][?QUERY]`, checked when the command line is
//! parsed. Only plain `http://` (relaying is for a LAN). The path defaults to `/stream.pcm`;
//! `format=f32le` is added to the query unless it names a format, so that the relayed samples
//! are the upstream's exactly. The query (with any `token=`) is sent but never shown: `/status`,
//! logs and errors show the URL without it.

use std::fmt;
use std::str::FromStr;

use crate::net::url;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUrl {
    server: url::Server,
    path: String,
    /// The query as sent (never empty: it names the format at least).
    query: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{}", .0.message(&WORDING))]
    Http(url::UrlError),
    #[error("user names and passwords in the URL are not supported; give the token as ?token=")]
    Credentials,
}

/// The relay's words for the refusals that depend on what the URL is for.
const WORDING: url::Wording = url::Wording {
    not_a_url: "expected a URL such as http://HOST:8000/stream.pcm",
    https: "https:// is not supported, only plain http:// (relaying is meant for a LAN)",
    other_scheme: "only http:// URLs can be relayed",
    bad_character: "a URL must not contain spaces or control characters",
};

const DEFAULT_PATH: &str = "/stream.pcm";

impl FromStr for RelayUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<RelayUrl, UrlError> {
        let url = url::split(text).map_err(UrlError::Http)?;
        if url.userinfo.is_some() {
            return Err(UrlError::Credentials);
        }
        let server = url::Server::parse(url.authority).map_err(UrlError::Http)?;
        let path_and_query = url
            .rest
            .split_once('#')
            .map_or(url.rest, |(before, _)| before);
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Ok(RelayUrl {
            server,
            path: if path.is_empty() { DEFAULT_PATH } else { path }.to_owned(),
            query: with_format(query),
        })
    }
}

/// The query, asking for f32le unless it already names a format.
fn with_format(query: &str) -> String {
    let names_format = form_urlencoded::parse(query.as_bytes()).any(|(key, _)| key == "format");
    match (names_format, query.is_empty()) {
        (true, _) => query.to_owned(),
        (false, true) => "format=f32le".to_owned(),
        (false, false) => format!("{query}&format=f32le"),
    }
}

impl RelayUrl {
    pub fn server(&self) -> &url::Server {
        &self.server
    }

    /// The request target: path and query.
    pub fn target(&self) -> String {
        format!("{}?{}", self.path, self.query)
    }
}

/// The URL without its query, which may carry the upstream's token.
impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.server.authority(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> RelayUrl {
        text.parse()
            .unwrap_or_else(|e| panic!("{text} must parse: {e}"))
    }

    #[test]
    fn a_full_url_keeps_its_parts_and_gains_the_format() {
        let url = parse("http://10.0.0.2:8001/stream.pcm?token=abc");
        assert_eq!(
            (url.server().host(), url.server().port()),
            ("10.0.0.2", 8001)
        );
        assert_eq!(url.server().authority(), "10.0.0.2:8001");
        assert_eq!(url.target(), "/stream.pcm?token=abc&format=f32le");
        assert_eq!(url.to_string(), "http://10.0.0.2:8001/stream.pcm");
    }

    #[test]
    fn defaults_fill_in_the_path_the_port_and_the_format() {
        let url = parse("HTTP://hub.local");
        assert_eq!(
            (url.server().host(), url.server().port()),
            ("hub.local", 80)
        );
        assert_eq!(url.target(), "/stream.pcm?format=f32le");
        assert_eq!(
            parse("http://hub:8000?token=t").target(),
            "/stream.pcm?token=t&format=f32le"
        );
        assert_eq!(
            parse("http://hub:8000/stream.pcm#x").target(),
            "/stream.pcm?format=f32le"
        );
    }

    #[test]
    fn a_named_format_is_kept() {
        let url = parse("http://hub:8000/stream.pcm?format=s16le");
        assert_eq!(url.target(), "/stream.pcm?format=s16le");
    }

    #[test]
    fn ipv6_literals_lose_their_brackets_for_resolving_only() {
        let url = parse("http://[::1]:9000/stream.pcm");
        assert_eq!((url.server().host(), url.server().port()), ("::1", 9000));
        assert_eq!(url.server().authority(), "[::1]:9000");
        assert_eq!(parse("http://[fe80::1]").server().port(), 80);
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let cases = [
            (
                "hub:8000",
                "expected a URL such as http://HOST:8000/stream.pcm",
            ),
            ("://hub", "expected a URL such as"),
            (
                "https://hub:8000/stream.pcm",
                "only plain http:// (relaying",
            ),
            (
                "ftp://hub/x",
                "only http:// URLs can be relayed, not ftp://",
            ),
            ("http://", "the URL names no host"),
            ("http://:8000/stream.pcm", "no host"),
            ("http://[::1/stream.pcm", "no host"),
            ("http://hub:http/", "bad port 'http'"),
            ("http://hub:0/", "bad port '0'"),
            ("http://hub:70000/", "bad port '70000'"),
            ("http://user:pw@hub/", "user names and passwords"),
            ("http://hub/a b", "a URL must not contain spaces"),
            ("http://hub/\r\nX-Evil: 1", "control characters"),
        ];
        for (text, expected) in cases {
            let error = text.parse::<RelayUrl>().unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
