//! A request body's content codings (RFC 9110, 8.4), for the routes whose policy reads the body:
//! a client may send its JSON gzip- or deflate-compressed, as the frameworks behind the gateway
//! accept (Express's JSON parser does by default), and the policy must read the fields the
//! upstream will read. The body is decoded never past the route's size limit, however small the
//! compressed bytes (a decompression bomb stops there); what is forwarded stays as sent.

use std::io::Read;

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use http::HeaderMap;
use http::header::CONTENT_ENCODING;
use sluice_contract::{ErrorCode, Values};

/// The codings the gateway decodes, for `Accept-Encoding` on a refusal (RFC 9110, 12.5.3).
pub(crate) const ACCEPTED: &str = "gzip, deflate, identity";

/// One content coding of a body, in the order the client applied them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Deflate,
}

/// A coding the gateway does not decode (`br`, `zstd`, a misspelling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unsupported;

/// Why a body's content could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Undecodable {
    /// The content is larger than the limit.
    TooLarge,
    /// The bytes are not what their coding says.
    Corrupt,
}

/// The codings `headers` declare, in the order they were applied; `identity` is none. Read
/// before a byte of the body is, so that one the gateway cannot decode is refused at once.
pub(crate) fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, Unsupported> {
    let mut codings = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| Unsupported)?;
        for name in value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                codings.push(Coding::Gzip);
            } else if name.eq_ignore_ascii_case("deflate") {
                codings.push(Coding::Deflate);
            } else if !name.eq_ignore_ascii_case("identity") {
                return Err(Unsupported);
            }
        }
    }
    Ok(codings)
}

/// The content of `body`, coded with `codings` ([`codings`]), at most `limit` bytes of it;
/// `None` when it is not coded at all (the body is its content).
pub(crate) fn decode(
    codings: &[Coding],
    body: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, Undecodable> {
    let Some((&last, earlier)) = codings.split_last() else {
        return Ok(None);
    };
    let mut content = decode_one(last, body, limit)?;
    // Codings are undone in the reverse of the order they were applied.
    for &coding in earlier.iter().rev() {
        content = decode_one(coding, &content, limit)?;
    }
    Ok(Some(content))
}

fn decode_one(coding: Coding, coded: &[u8], limit: usize) -> Result<Vec<u8>, Undecodable> {
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(MultiGzDecoder::new(coded)),
        // RFC 9110's deflate is the zlib format; some clients send the raw deflate stream, and
        // the two are told apart by zlib's two-byte header (RFC 1950: method 8, a check sum).
        Coding::Deflate if is_zlib(coded) => Box::new(ZlibDecoder::new(coded)),
        Coding::Deflate => Box::new(DeflateDecoder::new(coded)),
    };
    let mut content = Vec::new();
    // One byte past the limit tells a content that is too large from one that just fits.
    let read = reader
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut content);
    match read {
        Err(_) => Err(Undecodable::Corrupt),
        Ok(length) if length > limit => Err(Undecodable::TooLarge),
        Ok(_) => Ok(content),
    }
}

fn is_zlib(coded: &[u8]) -> bool {
    match coded {
        [first, second, ..] => {
            first & 0x0f == 8 && (u16::from(*first) << 8 | u16::from(*second)) % 31 == 0
        }
        _ => false,
    }
}

/// Reads a body the policy needs, within `max` bytes: refused before a byte is read when it
/// declares a larger length or a coding the gateway cannot decode, then read within `timeout`
/// and decoded within `max`. Returns the content the policy reads and the bytes as they were
/// sent (what is forwarded), or the refusal in the API's terms.
pub(crate) async fn read_for_policy<B>(
    headers: &HeaderMap,
    body: B,
    max: u64,
    timeout: std::time::Duration,
) -> Result<(bytes::Bytes, bytes::Bytes), (ErrorCode, Values)>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::{BodyExt, LengthLimitError, Limited};

    let too_large = || {
        let values = Values {
            max_size: Some(max),
            ..Values::default()
        };
        (ErrorCode::BodyTooLarge, values)
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        // Refused before a byte of it is read.
        return Err(too_large());
    }
    let Ok(codings) = codings(headers) else {
        return Err((ErrorCode::UnsupportedEncoding, Values::default()));
    };
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let bytes = match read {
        Err(_) => return Err((ErrorCode::RequestTimeout, Values::default())),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large());
        }
        Ok(Err(_)) => return Err((ErrorCode::MalformedBody, Values::default())),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    // The policy reads the content; the upstream gets the bytes as sent.
    match decode(&codings, &bytes, limit) {
        Ok(None) => Ok((bytes.clone(), bytes)),
        Ok(Some(decoded)) => Ok((bytes::Bytes::from(decoded), bytes)),
        Err(Undecodable::TooLarge) => Err(too_large()),
        Err(Undecodable::Corrupt) => Err((ErrorCode::MalformedBody, Values::default())),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use http::HeaderValue;

    use super::*;

    fn coded_as(names: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in names {
            headers.append(
                CONTENT_ENCODING,
                HeaderValue::from_str(name).expect("value"),
            );
        }
        headers
    }

    /// `body` decoded as `headers` declare it coded (with codings the gateway decodes).
    fn decode_as(
        headers: &HeaderMap,
        body: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Undecodable> {
        decode(&codings(headers).expect("supported codings"), body, limit)
    }

    fn gzip(content: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(content).expect("write");
        encoder.finish().expect("finish")
    }

    fn zlib(content: &[u8]) -> Vec<u8> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(content).expect("write");
        encoder.finish().expect("finish")
    }

    fn raw_deflate(content: &[u8]) -> Vec<u8> {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(content).expect("write");
        encoder.finish().expect("finish")
    }

    const JSON: &[u8] = br#"{"userId":"alice"}"#;

    #[test]
    fn a_body_with_no_coding_is_its_own_content() {
        assert_eq!(decode_as(&HeaderMap::new(), JSON, 100), Ok(None));
        assert_eq!(decode_as(&coded_as(&["identity"]), JSON, 100), Ok(None));
    }

    #[test]
    fn gzip_and_both_kinds_of_deflate_are_decoded() {
        for (names, coded) in [
            (&["gzip"][..], gzip(JSON)),
            (&["X-GZip"][..], gzip(JSON)),
            (&["deflate"][..], zlib(JSON)),
            (&["deflate"][..], raw_deflate(JSON)),
            // Two members, as `cat a.gz b.gz` makes.
            (
                &["gzip"][..],
                [gzip(b"{\"userId\":"), gzip(b"\"alice\"}")].concat(),
            ),
            // Applied in order, undone in reverse: deflate first, then gzip.
            (&["deflate, gzip"][..], gzip(&zlib(JSON))),
            (&["deflate", "identity", "gzip"][..], gzip(&zlib(JSON))),
        ] {
            assert_eq!(
                decode_as(&coded_as(names), &coded, 100),
                Ok(Some(JSON.to_vec())),
                "{names:?}"
            );
        }
    }

    #[test]
    fn content_past_the_limit_is_too_large_however_small_the_coded_bytes() {
        let bomb = gzip(&vec![b' '; 10 << 20]);
        assert!(bomb.len() < 20 << 10, "{}", bomb.len());
        assert_eq!(
            decode_as(&coded_as(&["gzip"]), &bomb, 100 << 10),
            Err(Undecodable::TooLarge)
        );
        // Exactly at the limit is within it.
        assert_eq!(
            decode_as(&coded_as(&["gzip"]), &gzip(JSON), JSON.len()),
            Ok(Some(JSON.to_vec()))
        );
        assert_eq!(
            decode_as(&coded_as(&["gzip"]), &gzip(JSON), JSON.len() - 1),
            Err(Undecodable::TooLarge)
        );
    }

    #[test]
    fn unknown_codings_and_corrupt_bytes_are_told_apart() {
        for names in [&["br"][..], &["gzip, zstd"][..], &["compress"][..]] {
            assert_eq!(codings(&coded_as(names)), Err(Unsupported));
        }
        assert_eq!(codings(&coded_as(&["gzip", "identity"])).map(drop), Ok(()));
        assert_eq!(
            decode_as(&coded_as(&["gzip"]), JSON, 100),
            Err(Undecodable::Corrupt)
        );
        let mut truncated = gzip(JSON);
        truncated.truncate(truncated.len() - 4);
        assert_eq!(
            decode_as(&coded_as(&["gzip"]), &truncated, 100),
            Err(Undecodable::Corrupt)
        );
    }
}
