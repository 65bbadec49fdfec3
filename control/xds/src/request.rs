//! SotW requests decoded without a `String` per resource name.
//!
//! A state-of-the-world ACK repeats every name the proxy subscribes to: with 1,000 proxies each
//! subscribed to 1,000 endpoint assignments, one endpoint change brings 1,000 ACKs and decoding
//! them with prost allocated a million strings (a third of the server's CPU per change). Here the
//! names stay slices of the received message ([`NameList`]); they are copied only when a
//! subscription really changes. Every other field is decoded by prost as usual.

use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;

/// `resource_names` of a request: UTF-8 slices of the received bytes, or an interned
/// [`EncodedNames`] when the request repeated a name list the stream had sent before (an ACK).
#[derive(Debug, Clone, Default)]
pub struct NameList {
    buf: Bytes,
    /// Where each name is in `buf`.
    spans: Spans,
    /// Set when these names are exactly that interned list (then `buf` and `spans` are empty).
    encoded: Option<Arc<EncodedNames>>,
}

/// A name list as a request encodes it (field 3, repeated: key, length, name, ...), with where
/// each name is. Interned ([`crate::NameSets::intern_encoded`]): 1,000 streams repeating the same
/// 1,000 names share one. A later request carrying the same bytes is recognised by one
/// comparison of those bytes ([`decode_sotw_with`]) and refers to this list instead of being
/// split name by name; the stream then knows by pointer equality that its subscription stands.
#[derive(Debug, PartialEq, Eq)]
pub struct EncodedNames {
    run: Bytes,
    /// Where each name is in `run`.
    spans: Spans,
}

impl EncodedNames {
    /// The encoding of `names`.
    pub fn new(names: &NameList) -> Self {
        let mut run = Vec::with_capacity(names.iter_bytes().map(|n| n.len() + 4).sum());
        let mut spans = Vec::with_capacity(names.len());
        for n in names.iter_bytes() {
            prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut run);
            prost::encoding::encode_varint(n.len() as u64, &mut run);
            spans.push((run.len() as u32, n.len() as u32));
            run.extend_from_slice(n);
        }
        EncodedNames {
            run: Bytes::from(run),
            spans,
        }
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.run
    }
}

impl NameList {
    pub fn from_strings<S: AsRef<str>>(names: &[S]) -> Self {
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(names.len());
        for n in names {
            let n = n.as_ref().as_bytes();
            spans.push((buf.len() as u32, n.len() as u32));
            buf.extend_from_slice(n);
        }
        NameList {
            buf: Bytes::from(buf),
            spans,
            encoded: None,
        }
    }

    /// The interned list these names are, if the request was recognised as repeating it.
    pub fn encoded(&self) -> Option<&Arc<EncodedNames>> {
        self.encoded.as_ref()
    }

    fn parts(&self) -> (&Bytes, &Spans) {
        match &self.encoded {
            Some(e) => (&e.run, &e.spans),
            None => (&self.buf, &self.spans),
        }
    }

    pub fn len(&self) -> usize {
        self.parts().1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names as bytes (no UTF-8 check: for comparisons).
    pub fn iter_bytes(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let (buf, spans) = self.parts();
        spans
            .iter()
            .map(move |&(at, len)| &buf[at as usize..(at + len) as usize])
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter_bytes().map(|n| {
            // Validated when decoded (or built from strings).
            std::str::from_utf8(n).unwrap_or_default()
        })
    }
}

impl PartialEq for NameList {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for NameList {}

/// A SotW request: every field but `resource_names` in `message`, the names in `names`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SotwRequest {
    pub message: DiscoveryRequest,
    pub names: NameList,
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(mut message: DiscoveryRequest) -> Self {
        let names = NameList::from_strings(&std::mem::take(&mut message.resource_names));
        SotwRequest { message, names }
    }
}

fn varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

/// (offset, length) of each name.
type Spans = Vec<(u32, u32)>;

/// What [`split`] found of the names.
enum Names {
    Spans(Spans),
    /// The names are exactly this known list.
    Known(Arc<EncodedNames>),
}

/// Splits an encoded `DiscoveryRequest` into its names (field 3) and everything else. When the
/// names start with the bytes of one of `known` and no other name follows, they are that list
/// (one comparison instead of walking every name). `None` on anything unusual, for which prost
/// decodes the whole message instead.
fn split(bytes: &Bytes, known: &[Arc<EncodedNames>]) -> Option<(Vec<u8>, Names)> {
    let data = &bytes[..];
    let mut rest = Vec::new();
    let mut spans = Vec::new();
    let mut pos = 0;
    // The names are usually one run of field-3 entries: (start of the first, end of the last).
    let mut run: Option<(usize, usize)> = None;
    let mut one_run = true;
    let mut hit: Option<Arc<EncodedNames>> = None;
    while pos < data.len() {
        let start = pos;
        let key = varint(data, &mut pos)?;
        let end = match key & 7 {
            0 => {
                varint(data, &mut pos)?;
                pos
            }
            1 => pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(data, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                if key >> 3 == 3 {
                    if hit.is_some() {
                        // More names after a known list: not that list after all.
                        return split(bytes, &[]);
                    }
                    if run.is_none() {
                        if let Some(k) = known.iter().find(|k| {
                            !k.run.is_empty() && data.get(start..start + k.run.len()) == Some(&k.run[..])
                        }) {
                            hit = Some(k.clone());
                            pos = start + k.run.len();
                            continue;
                        }
                    }
                    data.get(pos..end)?;
                    spans.push((u32::try_from(pos).ok()?, u32::try_from(len).ok()?));
                    run = Some(match run {
                        None => (pos, end),
                        Some((first, _)) => (first, end),
                    });
                    pos = end;
                    continue;
                }
                end
            }
            5 => pos.checked_add(4)?,
            _ => return None,
        };
        rest.extend_from_slice(data.get(start..end)?);
        if run.is_some() {
            one_run = false;
        }
        pos = end;
    }
    if let Some(k) = hit {
        // Valid UTF-8 when it was first decoded; the same bytes now.
        return Some((rest, Names::Known(k)));
    }
    // UTF-8 check of every name. One check over the whole run suffices when it passes: each name
    // is then preceded by an ASCII byte (the last byte of its length) and followed by one (the
    // next key, 0x1a) or the run's end, so no name can start or end inside a multi-byte sequence.
    // If it fails (a length of 128+ bytes is itself not UTF-8), each name is checked.
    let run_ok = one_run
        && run.is_some_and(|(first, last)| {
            data.get(first..last)
                .is_some_and(|r| std::str::from_utf8(r).is_ok())
        });
    if !run_ok {
        for &(at, len) in &spans {
            std::str::from_utf8(data.get(at as usize..(at + len) as usize)?).ok()?;
        }
    }
    Some((rest, Names::Spans(spans)))
}

/// Decodes one encoded `DiscoveryRequest`.
pub fn decode_sotw(bytes: Bytes) -> Result<SotwRequest, prost::DecodeError> {
    decode_sotw_with(bytes, &[])
}

/// Decodes one encoded `DiscoveryRequest` whose names may repeat one of the `known` lists (the
/// stream's current subscriptions): then they are that list, found with one comparison.
pub fn decode_sotw_with(
    bytes: Bytes,
    known: &[Arc<EncodedNames>],
) -> Result<SotwRequest, prost::DecodeError> {
    match split(&bytes, known) {
        Some((rest, Names::Spans(spans))) => Ok(SotwRequest {
            message: DiscoveryRequest::decode(rest.as_slice())?,
            names: NameList {
                buf: bytes,
                spans,
                encoded: None,
            },
        }),
        Some((rest, Names::Known(k))) => Ok(SotwRequest {
            message: DiscoveryRequest::decode(rest.as_slice())?,
            names: NameList {
                encoded: Some(k),
                ..NameList::default()
            },
        }),
        None => DiscoveryRequest::decode(bytes).map(SotwRequest::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    #[test]
    fn a_decoded_request_equals_prosts_decoding_with_the_names_apart() {
        let req = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node {
                id: "a.default".into(),
                ..Default::default()
            }),
            resource_names: vec!["9080|default|a".into(), "".into(), "ünï".into()],
            type_url: crate::ENDPOINT.into(),
            response_nonce: "7".into(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            ..Default::default()
        };
        let decoded = decode_sotw(Bytes::from(req.encode_to_vec())).expect("decode");
        assert_eq!(decoded, SotwRequest::from(req.clone()));
        assert_eq!(
            decoded.names.iter().collect::<Vec<_>>(),
            ["9080|default|a", "", "ünï"]
        );
        assert!(decoded.message.resource_names.is_empty());
        assert_eq!(decoded.message.node, req.node);
    }

    #[test]
    fn names_are_checked_for_utf8_whatever_their_length_or_position() {
        let long = "é".repeat(100); // 200 bytes: a two-byte length, not UTF-8 itself
        let req = DiscoveryRequest {
            resource_names: vec!["a".into(), long.clone(), "ü".into()],
            type_url: "t".into(),
            ..Default::default()
        };
        let decoded = decode_sotw(Bytes::from(req.encode_to_vec())).expect("decode");
        assert_eq!(
            decoded.names.iter().collect::<Vec<_>>(),
            ["a", long.as_str(), "ü"]
        );
        // A name cut inside a two-byte character, followed by another name.
        let mut bad = Vec::new();
        prost::encoding::bytes::encode(3, &vec![b'a', 0xc3], &mut bad);
        prost::encoding::bytes::encode(3, &b"b".to_vec(), &mut bad);
        assert!(decode_sotw(Bytes::from(bad.clone())).is_err());
        assert!(DiscoveryRequest::decode(bad.as_slice()).is_err());
        // Names with another field between them.
        let mut split = Vec::new();
        prost::encoding::string::encode(3, &"x".to_string(), &mut split);
        prost::encoding::string::encode(4, &"t".to_string(), &mut split);
        prost::encoding::bytes::encode(3, &vec![0xff], &mut split);
        assert!(decode_sotw(Bytes::from(split)).is_err());
    }

    #[test]
    fn a_request_repeating_a_known_name_list_is_that_list_and_decodes_like_prost() {
        let names = ["9080|default|a", "ünï", "b"];
        let req = DiscoveryRequest {
            version_info: "v1".into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: crate::ENDPOINT.into(),
            response_nonce: "7".into(),
            ..Default::default()
        };
        let known = Arc::new(EncodedNames::new(&NameList::from_strings(&names)));
        let other = Arc::new(EncodedNames::new(&NameList::from_strings(&["z"])));
        let hints = [other, known.clone()];
        let decoded = decode_sotw_with(Bytes::from(req.encode_to_vec()), &hints).expect("decode");
        assert!(decoded.names.encoded().is_some_and(|e| Arc::ptr_eq(e, &known)));
        assert_eq!(decoded, SotwRequest::from(req.clone()));
        // More names after the known ones, or fewer: decoded name by name.
        for list in [&["9080|default|a", "ünï", "b", "c"][..], &["9080|default|a"][..]] {
            let r = DiscoveryRequest {
                resource_names: list.iter().map(|n| n.to_string()).collect(),
                ..req.clone()
            };
            let decoded = decode_sotw_with(Bytes::from(r.encode_to_vec()), &hints).expect("decode");
            assert!(decoded.names.encoded().is_none());
            assert_eq!(decoded, SotwRequest::from(r));
        }
        // Known names, then another field, then a name: prost's view of it.
        let mut mixed = known.bytes().to_vec();
        prost::encoding::string::encode(4, &"t".to_string(), &mut mixed);
        prost::encoding::string::encode(3, &"late".to_string(), &mut mixed);
        let decoded = decode_sotw_with(Bytes::from(mixed.clone()), &hints).expect("decode");
        let prost = DiscoveryRequest::decode(mixed.as_slice()).expect("prost");
        assert_eq!(decoded, SotwRequest::from(prost));
    }

    #[test]
    fn invalid_bytes_are_an_error_like_prosts() {
        assert!(decode_sotw(Bytes::from_static(&[0x1a, 0x05, b'a'])).is_err());
        assert!(decode_sotw(Bytes::from_static(&[0x1a, 0x01, 0xff])).is_err());
    }
}
