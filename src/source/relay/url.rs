//! The `--relay` URL: `http://HOST[:PORT][/PATH][?QUERY]`, checked when the command line is
//! parsed. Only plain `http://` (relaying is for a LAN). The path defaults to `/stream.pcm`;
//! `format=f32le` is added to the query unless it names a format, so that the relayed samples
//! are the upstream's exactly. The query (with any `token=`) is sent but never shown: `/status`,
//! logs and errors show the URL without it.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUrl {
    /// `host[:port]` as written, for the `Host` header and for display.
    authority: String,
    /// The host to resolve, without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    path: String,
    /// The query as sent (never empty: it names the format at least).
    query: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("expected a URL such as http://HOST:8000/stream.pcm")]
    NotAUrl,
    #[error("https:// is not supported, only plain http:// (relaying is meant for a LAN)")]
    Https,
    #[error("only http:// URLs can be relayed, not {0}://")]
    Scheme(String),
    #[error("a URL must not contain spaces or control characters")]
    BadCharacter,
    #[error("the URL names no host")]
    NoHost,
    #[error("user names and passwords in the URL are not supported; give the token as ?token=")]
    Credentials,
    #[error("bad port '{0}'")]
    BadPort(String),
}

const DEFAULT_PATH: &str = "/stream.pcm";
const DEFAULT_PORT: u16 = 80;

impl FromStr for RelayUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<RelayUrl, UrlError> {
        // Also keeps CR and LF out of the request this URL becomes.
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::BadCharacter);
        }
        let (scheme, rest) = text.split_once("://").ok_or(UrlError::NotAUrl)?;
        match scheme.to_ascii_lowercase().as_str() {
            "http" => {}
            "https" => return Err(UrlError::Https),
            "" => return Err(UrlError::NotAUrl),
            _ => return Err(UrlError::Scheme(scheme.to_owned())),
        }
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        let (host, port) = split_host_port(authority)?;
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Ok(RelayUrl {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            path: if path.is_empty() { DEFAULT_PATH } else { path }.to_owned(),
            query: with_format(query),
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; also parses the `--icecast` URL's authority.
pub(crate) fn split_host_port(authority: &str) -> Result<(&str, u16), UrlError> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').ok_or(UrlError::NoHost)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').unwrap_or(after))),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| UrlError::BadPort(port.to_owned()))?,
    };
    Ok((host, port))
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
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target: path and query.
    pub fn target(&self) -> String {
        format!("{}?{}", self.path, self.query)
    }
}

/// The URL without its query, which may carry the upstream's token.
impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
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
        assert_eq!((url.host(), url.port()), ("10.0.0.2", 8001));
        assert_eq!(url.authority(), "10.0.0.2:8001");
        assert_eq!(url.target(), "/stream.pcm?token=abc&format=f32le");
        assert_eq!(url.to_string(), "http://10.0.0.2:8001/stream.pcm");
    }

    #[test]
    fn defaults_fill_in_the_path_the_port_and_the_format() {
        let url = parse("HTTP://hub.local");
        assert_eq!((url.host(), url.port()), ("hub.local", 80));
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
        assert_eq!((url.host(), url.port()), ("::1", 9000));
        assert_eq!(url.authority(), "[::1]:9000");
        assert_eq!(parse("http://[fe80::1]").port(), 80);
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let cases = [
            ("hub:8000", UrlError::NotAUrl),
            ("://hub", UrlError::NotAUrl),
            ("https://hub:8000/stream.pcm", UrlError::Https),
            ("ftp://hub/x", UrlError::Scheme("ftp".into())),
            ("http://", UrlError::NoHost),
            ("http://:8000/stream.pcm", UrlError::NoHost),
            ("http://[::1/stream.pcm", UrlError::NoHost),
            ("http://hub:http/", UrlError::BadPort("http".into())),
            ("http://hub:0/", UrlError::BadPort("0".into())),
            ("http://hub:70000/", UrlError::BadPort("70000".into())),
            ("http://user:pw@hub/", UrlError::Credentials),
            ("http://hub/a b", UrlError::BadCharacter),
            ("http://hub/\r\nX-Evil: 1", UrlError::BadCharacter),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<RelayUrl>(), Err(expected), "{text}");
        }
    }
}
