//! The `--icecast` URL: `http://[USER:]PASSWORD@HOST[:PORT]/MOUNT`, checked when the settings
//! are validated. Only plain `http://` (Icecast 2.4's source protocol); the user defaults to
//! `source`, the port to 80 as in any http:// URL; the mount and the password must be given.
//! User and password may be percent-encoded (`%40` for `@`).
//!
//! The password is sent and never shown: `Display` (used by `/status`, `/metrics`, logs and
//! errors) and `Debug` leave the user information out, and no error quotes the URL.

use std::fmt;
use std::str::FromStr;

use crate::net::url;

#[derive(Clone, PartialEq, Eq)]
pub struct IcecastUrl {
    server: url::Server,
    mount: String,
    user: String,
    password: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{}", .0.message(&WORDING))]
    Http(url::UrlError),
    /// Quotes nothing of the URL, which carries the password.
    #[error("the URL has a bad port")]
    BadPort,
    #[error(
        "the URL carries no source password: give it as http://source:PASSWORD@HOST:PORT/MOUNT"
    )]
    NoPassword,
    #[error("the URL names no mount: give one as http://source:PASSWORD@HOST:PORT/live")]
    NoMount,
    #[error("a mount takes no query or fragment")]
    Query,
    #[error("bad percent-encoding in the user or password")]
    BadEncoding,
}

/// The Icecast push's words for the refusals that depend on what the URL is for.
const WORDING: url::Wording = url::Wording {
    not_a_url: "expected a URL such as http://source:PASSWORD@HOST:8000/live",
    https: "https:// is not supported, only plain http:// (Icecast 2.4's source protocol)",
    other_scheme: "only http:// URLs are supported",
    bad_character: "the URL must not contain spaces or control characters",
};

impl From<url::UrlError> for UrlError {
    fn from(error: url::UrlError) -> UrlError {
        match error {
            url::UrlError::BadPort(_) => UrlError::BadPort,
            error => UrlError::Http(error),
        }
    }
}

const DEFAULT_USER: &str = "source";

impl FromStr for IcecastUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<IcecastUrl, UrlError> {
        let url = url::split(text)?;
        let userinfo = url.userinfo.ok_or(UrlError::NoPassword)?;
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (percent_decode(user)?, percent_decode(password)?),
            None => (String::new(), String::new()),
        };
        if password.is_empty() {
            return Err(UrlError::NoPassword);
        }
        let server = url::Server::parse(url.authority)?;
        let mount = url.rest;
        if mount.contains(['?', '#']) {
            return Err(UrlError::Query);
        }
        if mount.trim_matches('/').is_empty() {
            return Err(UrlError::NoMount);
        }
        Ok(IcecastUrl {
            server,
            mount: mount.to_owned(),
            user: if user.is_empty() {
                DEFAULT_USER.to_owned()
            } else {
                user
            },
            password,
        })
    }
}

/// `%XX` escapes decoded (no `+` for space: this is not a form); the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, UrlError> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let hex = after.get(..2).ok_or(UrlError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::BadEncoding)?;
            bytes.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::BadEncoding)?);
            rest = &after[2..];
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    String::from_utf8(bytes).map_err(|_| UrlError::BadEncoding)
}

impl IcecastUrl {
    pub fn server(&self) -> &url::Server {
        &self.server
    }

    /// The mount path, e.g. `/live.opus`.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The mount's file extension, lowercase, if it has one.
    pub fn extension(&self) -> Option<String> {
        let name = self.mount.rsplit('/').next()?;
        let (_, extension) = name.rsplit_once('.')?;
        Some(extension.to_ascii_lowercase())
    }

    /// `user:password`, for HTTP Basic authentication.
    pub fn credentials(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// The URL without its user information, which carries the password.
impl fmt::Display for IcecastUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.server.authority(), self.mount)
    }
}

impl fmt::Debug for IcecastUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IcecastUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> IcecastUrl {
        text.parse()
            .unwrap_or_else(|e| panic!("{text} must parse: {e}"))
    }

    #[test]
    fn a_full_url_keeps_its_parts_and_hides_the_password() {
        let url = parse("http://source:s3cret@10.0.0.2:8000/live.opus");
        assert_eq!(
            (url.server().host(), url.server().port()),
            ("10.0.0.2", 8000)
        );
        assert_eq!(
            (url.server().authority(), url.mount()),
            ("10.0.0.2:8000", "/live.opus")
        );
        assert_eq!(url.credentials(), "source:s3cret");
        assert_eq!(url.extension().as_deref(), Some("opus"));
        assert_eq!(url.to_string(), "http://10.0.0.2:8000/live.opus");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn the_user_defaults_to_source_and_the_port_to_80() {
        let url = parse("http://:pw@icecast.lan/radio");
        assert_eq!(url.credentials(), "source:pw");
        assert_eq!(url.server().port(), 80);
        assert_eq!(url.extension(), None);
        let url = parse("http://dj:p%40ss@w0rd@[::1]:8001/a.b/live.FLAC");
        assert_eq!(url.credentials(), "dj:p@ss@w0rd");
        assert_eq!((url.server().host(), url.server().port()), ("::1", 8001));
        assert_eq!(url.extension().as_deref(), Some("flac"));
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        let cases = [
            ("icecast:8000/live", UrlError::Http(url::UrlError::NotAUrl)),
            (
                "https://source:pw@h/live",
                UrlError::Http(url::UrlError::Https),
            ),
            (
                "icecast://source:pw@h/live",
                UrlError::Http(url::UrlError::Scheme("icecast".into())),
            ),
            ("http://h:8000/live", UrlError::NoPassword),
            ("http://source@h:8000/live", UrlError::NoPassword),
            ("http://source:@h:8000/live", UrlError::NoPassword),
            (
                "http://source:pw@:8000/live",
                UrlError::Http(url::UrlError::NoHost),
            ),
            ("http://source:pw@h:x/live", UrlError::BadPort),
            ("http://source:pw@h:8000", UrlError::NoMount),
            ("http://source:pw@h:8000/", UrlError::NoMount),
            ("http://source:pw@h:8000/live?x=1", UrlError::Query),
            ("http://source:p%zz@h/live", UrlError::BadEncoding),
            (
                "http://source:pw@h/li ve",
                UrlError::Http(url::UrlError::BadCharacter),
            ),
            (
                "http://source:pw@h/live\r\nX: 1",
                UrlError::Http(url::UrlError::BadCharacter),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<IcecastUrl>(), Err(expected), "{text}");
        }
    }
}
