//! What the relay and the Icecast push share as HTTP/1.x clients: the `http://` URL they are
//! given and the response head they read. Each client keeps its own IO (blocking for the relay,
//! async for the push) and its own errors, worded for its option; this module stops at
//! parsing.
//!
//! - [`url`]: the parts of a plain `http://` URL, host and port checked.
//! - [`response`]: the status line and header fields of a response head, bounded in size.
//! - [`ConnectError`]: why no connection to the URL's host was made.

pub mod response;
pub mod url;

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
}
