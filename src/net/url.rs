//! The `http://` URLs pcmcast connects to (`--relay`, `--icecast`): checked by hand, plain
//! `http://` only, the port 80 unless given. [`split`] checks what every such URL must be and
//! cuts it into user information, authority and the rest; [`Server::parse`] reads the
//! authority. Each caller checks its own parts on top, and words the refusals for its option
//! ([`Wording`]).

use super::ConnectError;

/// Why a URL is not a plain `http://` URL with a host and a port.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlError {
    NotAUrl,
    Https,
    /// Another scheme, as written.
    Scheme(String),
    BadCharacter,
    NoHost,
    /// The port as written.
    BadPort(String),
}

/// How a caller words the refusals that depend on what its URL is for.
#[derive(Debug)]
pub struct Wording {
    /// For [`UrlError::NotAUrl`]: what to give instead, with an example.
    pub not_a_url: &'static str,
    /// For [`UrlError::Https`]: why only plain `http://`.
    pub https: &'static str,
    /// For [`UrlError::Scheme`], followed by `, not SCHEME://`.
    pub other_scheme: &'static str,
    /// For [`UrlError::BadCharacter`].
    pub bad_character: &'static str,
}

impl UrlError {
    /// The error message, in the caller's `wording` where it has its own.
    pub fn message(&self, wording: &Wording) -> String {
        match self {
            UrlError::NotAUrl => wording.not_a_url.to_owned(),
            UrlError::Https => wording.https.to_owned(),
            UrlError::Scheme(scheme) => format!("{}, not {scheme}://", wording.other_scheme),
            UrlError::BadCharacter => wording.bad_character.to_owned(),
            UrlError::NoHost => "the URL names no host".to_owned(),
            UrlError::BadPort(port) => format!("bad port '{port}'"),
        }
    }
}

const DEFAULT_PORT: u16 = 80;

/// A URL cut at its authority, nothing decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUrl<'a> {
    /// What stands before the last `@` of the authority, if it has one.
    pub userinfo: Option<&'a str>,
    /// `host[:port]`, without the user information.
    pub authority: &'a str,
    /// Path, query and fragment as written (possibly empty).
    pub rest: &'a str,
}

/// Checks the characters and the scheme of `text` and cuts it at its authority.
pub fn split(text: &str) -> Result<HttpUrl<'_>, UrlError> {
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
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    // The last `@` ends the user information: a password may hold a bare `@`.
    let (userinfo, authority) = match authority.rsplit_once('@') {
        Some((userinfo, authority)) => (Some(userinfo), authority),
        None => (None, authority),
    };
    Ok(HttpUrl {
        userinfo,
        authority,
        rest,
    })
}

/// The server a URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// `host[:port]` as written, for the `Host` header and for display.
    authority: String,
    /// The host to resolve, without the brackets of an IPv6 literal.
    host: String,
    port: u16,
}

impl Server {
    /// Reads an authority without user information (see [`split_host_port`]).
    pub fn parse(authority: &str) -> Result<Server, UrlError> {
        let (host, port) = split_host_port(authority)?;
        Ok(Server {
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The host's addresses could not be looked up.
    pub fn unresolved(&self, source: std::io::Error) -> ConnectError {
        ConnectError::Resolve {
            host: self.host.clone(),
            source,
        }
    }

    /// No address of the host took the connection; `source` is the last refusal.
    pub fn unreachable(&self, source: std::io::Error) -> ConnectError {
        ConnectError::Connect {
            addr: format!("{}:{}", self.host, self.port),
            source,
        }
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`: the host to resolve (without the brackets of an
/// IPv6 literal) and the port.
fn split_host_port(authority: &str) -> Result<(&str, u16), UrlError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_cut_at_its_authority() {
        let url = split("HTTP://dj:p@ss@[::1]:8001/live?x#y").unwrap();
        assert_eq!(url.userinfo, Some("dj:p@ss"));
        assert_eq!(url.authority, "[::1]:8001");
        assert_eq!(url.rest, "/live?x#y");
        let url = split("http://hub#x").unwrap();
        assert_eq!((url.userinfo, url.authority, url.rest), (None, "hub", "#x"));
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(split_host_port("hub"), Ok(("hub", 80)));
        assert_eq!(split_host_port("hub:8000"), Ok(("hub", 8000)));
        assert_eq!(split_host_port("[::1]"), Ok(("::1", 80)));
        assert_eq!(split_host_port("[::1]:9000"), Ok(("::1", 9000)));
        assert_eq!(split_host_port(""), Err(UrlError::NoHost));
        assert_eq!(split_host_port("[::1"), Err(UrlError::NoHost));
        assert_eq!(split_host_port("hub:0"), Err(UrlError::BadPort("0".into())));
    }
}
