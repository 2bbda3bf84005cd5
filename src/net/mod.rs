//! What the relay and the Icecast push share as HTTP/1.x clients: the `http://` URL they are
//! given and the response head they read. Each client keeps its own IO (blocking for the relay,
//! async for the push) and its own errors, worded for its option; this module stops at
//! parsing.
//!
//! - [`url`]: the parts of a plain `http://` URL, host and port checked.
//! - [`response`]: the status line and header fields of a response head, bounded in size.

pub mod response;
pub mod url;
