//! The head of an HTTP/1.x response, as the relay and the Icecast push read it: the status
//! line and the header fields, parsed once all of it has come, and bounded in size. Reading
//! stays with each caller (blocking for the relay, async for the push): it feeds what it has
//! read to [`ResponseHead::parse`] until that returns a head.

/// Most bytes a response head may take; pcmcast's and Icecast's are a few hundred.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields a response head may have.
const MAX_FIELDS: usize = 64;

/// Why the bytes read are not the head of an HTTP/1.x response.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    NotHttp,
    /// No end of the head within [`MAX_HEAD_BYTES`].
    TooLong,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    /// Name and value of each header field, in order, the value trimmed.
    fields: Vec<(String, String)>,
    /// The bytes the head takes, its empty line included: the body starts after them.
    pub len: usize,
}

impl ResponseHead {
    /// The head at the start of `buffer`, or `None` while it is incomplete and more must be
    /// read.
    pub fn parse(buffer: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(buffer) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buffer.len() <= MAX_HEAD_BYTES => return Ok(None),
            Ok(httparse::Status::Partial) => return Err(HeadError::TooLong),
            Err(_) => return Err(HeadError::NotHttp),
        };
        let status = response
            .code
            .filter(|status| (100..600).contains(status))
            .ok_or(HeadError::NotHttp)?;
        let fields = response
            .headers
            .iter()
            .map(|field| {
                let value = String::from_utf8_lossy(field.value);
                (field.name.to_owned(), value.trim().to_owned())
            })
            .collect();
        Ok(Some(ResponseHead {
            status,
            reason: response.reason.unwrap_or_default().to_owned(),
            fields,
            len,
        }))
    }

    /// The value of header field `name` (case-insensitive), if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &[u8]) -> ResponseHead {
        ResponseHead::parse(head).unwrap().unwrap()
    }

    #[test]
    fn a_head_gives_status_reason_and_fields() {
        let head =
            parse(b"HTTP/1.1 200 OK\r\nX-Pcm-Rate:  48000 \r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((head.status, head.reason.as_str()), (200, "OK"));
        assert_eq!(head.field("x-pcm-rate"), Some("48000"));
        assert_eq!(head.field("Transfer-Encoding"), Some("chunked"));
        assert_eq!(head.field("Content-Length"), None);
        let head = parse(b"HTTP/1.0 404\r\n\r\n");
        assert_eq!((head.status, head.reason.as_str()), (404, ""));
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_the_body_follows() {
        assert_eq!(ResponseHead::parse(b"HTTP/1.0 200 OK\r\n"), Ok(None));
        assert_eq!(parse(b"HTTP/1.0 200 OK\r\n\r\n").len, 19);
        let refusal = b"HTTP/1.0 403 Forbidden\r\nConnection: Close\r\n\r\nMountpoint in use";
        let head = parse(refusal);
        assert_eq!((head.status, head.reason.as_str()), (403, "Forbidden"));
        assert_eq!(&refusal[head.len..], b"Mountpoint in use");
    }

    #[test]
    fn what_is_not_an_http_head_is_refused() {
        for head in [
            &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
            b"SSH-2.0",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert_eq!(
                ResponseHead::parse(head),
                Err(HeadError::NotHttp),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_head_without_an_end_is_bounded() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        head.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(ResponseHead::parse(&head), Ok(None));
        head.push(b'a');
        assert_eq!(ResponseHead::parse(&head), Err(HeadError::TooLong));
    }
}
