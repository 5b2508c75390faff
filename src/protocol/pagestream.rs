//! Neon pagestream v3 messages (ARCHITECTURE §4 step 1) and this project's extension (tags ≥ 0x40).
//!
//! Every message is the payload of one CopyData frame. All integers are big-endian.
//!
//! Owns: `Request` and `Response` with their encodings, the tags (`tag`), the sizes and bounds
//! (`MAX_ERROR_MESSAGE_LEN`, `MAX_PREFETCH_BLOCKS`) and `LATEST_LSN`. Sans-IO like `pgwire`, whose
//! `Reader` it decodes with: no socket, no clock, and no decision about what a request means (the
//! server's session and the client make those).

use crate::protocol::page::Page;
use crate::protocol::pgwire::{ProtocolError, Reader};
use lfc::{RelTag, MAX_FORKNUM, PAGE_SIZE};

/// `request_lsn` meaning "the latest version".
pub const LATEST_LSN: u64 = u64::MAX;

/// Request tags (Neon's and ours).
pub mod tag {
    pub const EXISTS: u8 = 0;
    pub const NBLOCKS: u8 = 1;
    pub const GET_PAGE: u8 = 2;
    pub const DB_SIZE: u8 = 3;
    pub const PREFETCH_TARGET: u8 = 0x40;
    pub const PREFETCH: u8 = 0x41;
    pub const PUT_PAGE: u8 = 0x42;
    pub const PREFETCH_PRIORITY: u8 = 0x43;

    pub const EXISTS_RESPONSE: u8 = 100;
    pub const NBLOCKS_RESPONSE: u8 = 101;
    pub const GET_PAGE_RESPONSE: u8 = 102;
    pub const ERROR_RESPONSE: u8 = 103;
    pub const DB_SIZE_RESPONSE: u8 = 104;
    pub const PREFETCH_TARGET_RESPONSE: u8 = 0xC0;
    pub const PUT_PAGE_RESPONSE: u8 = 0xC2;
    pub const PREFETCH_PRIORITY_RESPONSE: u8 = 0xC3;
}

/// Size of the common request header: tag, reqid, request_lsn, not_modified_since.
pub const HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Size of a relation on the wire.
pub const REL_LEN: usize = 4 + 4 + 4 + 1;
/// A GetPage request is exactly this long.
pub const GET_PAGE_REQUEST_LEN: usize = HEADER_LEN + REL_LEN + 4;
/// A GetPage response is exactly this long.
pub const GET_PAGE_RESPONSE_LEN: usize = GET_PAGE_REQUEST_LEN + PAGE_SIZE;
/// Longest error message the server sends or a client accepts.
pub const MAX_ERROR_MESSAGE_LEN: usize = 4096;
/// Most blocks one Prefetch request may name (u16 on the wire).
pub const MAX_PREFETCH_BLOCKS: u16 = u16::MAX;

/// The fields every request starts with and every response echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub reqid: u64,
    pub request_lsn: u64,
    pub not_modified_since: u64,
}

/// Where a connection's prefetched pages go: a UDP port on the TCP peer's own address, the
/// key that authenticates the datagrams, and the path MTU the compute expects (the server
/// splits pages to fit it; 0: unknown, whole pages).
#[derive(Clone, PartialEq, Eq)]
pub struct PrefetchTarget {
    pub udp_port: u16,
    pub key_id: u32,
    pub key: [u8; 32],
    pub path_mtu: u32,
}

impl std::fmt::Debug for PrefetchTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never print it.
        f.debug_struct("PrefetchTarget")
            .field("udp_port", &self.udp_port)
            .field("key_id", &self.key_id)
            .field("path_mtu", &self.path_mtu)
            .finish_non_exhaustive()
    }
}

/// How the page server's sender ranks a connection's prefetches against other connections'
/// (`PrefetchPriority` request; one byte on the wire). A connection starts `Foreground`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum PrefetchPriority {
    /// A backend's reads: what queries wait on.
    #[default]
    Foreground,
    /// Work nobody waits on now (prewarm): sent when no foreground connection has a page due,
    /// and otherwise only a small share of the sender's batches, so it never starves either.
    Background,
}

impl PrefetchPriority {
    fn to_wire(self) -> u8 {
        match self {
            PrefetchPriority::Foreground => 0,
            PrefetchPriority::Background => 1,
        }
    }

    fn from_wire(b: u8) -> Result<PrefetchPriority, ProtocolError> {
        match b {
            0 => Ok(PrefetchPriority::Foreground),
            1 => Ok(PrefetchPriority::Background),
            _ => Err(ProtocolError::Malformed {
                what: "prefetch priority",
                why: "neither 0 (foreground) nor 1 (background)",
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exists {
        hdr: Header,
        rel: RelTag,
    },
    Nblocks {
        hdr: Header,
        rel: RelTag,
    },
    GetPage {
        hdr: Header,
        rel: RelTag,
        blkno: u32,
    },
    DbSize {
        hdr: Header,
        dbnode: u32,
    },
    PrefetchTarget {
        hdr: Header,
        target: PrefetchTarget,
    },
    /// Fire-and-forget: no TCP response. `not_modified_since` covers every block of the range.
    Prefetch {
        hdr: Header,
        rel: RelTag,
        first_blkno: u32,
        nblocks: u16,
    },
    /// Adds a page version at `lsn` (stands in for WAL ingest in tests and demos).
    PutPage {
        hdr: Header,
        rel: RelTag,
        blkno: u32,
        lsn: u64,
        page: Box<Page>,
    },
    /// Ranks this connection's prefetches, from now on (answered, so a client learns that the
    /// server knows the message: an older server closes the connection on an unknown tag).
    /// A message of its own rather than a field of PrefetchTarget or Prefetch: neither
    /// message's bytes change, and a connection sets it once.
    PrefetchPriority {
        hdr: Header,
        priority: PrefetchPriority,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Exists {
        hdr: Header,
        rel: RelTag,
        exists: bool,
    },
    Nblocks {
        hdr: Header,
        rel: RelTag,
        n_blocks: u32,
    },
    GetPage {
        hdr: Header,
        rel: RelTag,
        blkno: u32,
        page: Box<Page>,
    },
    DbSize {
        hdr: Header,
        dbnode: u32,
        size: i64,
    },
    Error {
        hdr: Header,
        message: String,
    },
    PrefetchTarget {
        hdr: Header,
        udp_port: u16,
    },
    PutPage {
        hdr: Header,
        rel: RelTag,
        blkno: u32,
        lsn: u64,
    },
    PrefetchPriority {
        hdr: Header,
        priority: PrefetchPriority,
    },
}

impl Request {
    pub fn header(&self) -> Header {
        match self {
            Request::Exists { hdr, .. }
            | Request::Nblocks { hdr, .. }
            | Request::GetPage { hdr, .. }
            | Request::DbSize { hdr, .. }
            | Request::PrefetchTarget { hdr, .. }
            | Request::Prefetch { hdr, .. }
            | Request::PutPage { hdr, .. }
            | Request::PrefetchPriority { hdr, .. } => *hdr,
        }
    }

    /// Whether the server answers this request on the TCP connection.
    pub fn expects_response(&self) -> bool {
        !matches!(self, Request::Prefetch { .. })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Exists { hdr, rel } => {
                put_header(out, tag::EXISTS, hdr);
                put_rel(out, rel);
            }
            Request::Nblocks { hdr, rel } => {
                put_header(out, tag::NBLOCKS, hdr);
                put_rel(out, rel);
            }
            Request::GetPage { hdr, rel, blkno } => {
                put_header(out, tag::GET_PAGE, hdr);
                put_rel(out, rel);
                out.extend_from_slice(&blkno.to_be_bytes());
            }
            Request::DbSize { hdr, dbnode } => {
                put_header(out, tag::DB_SIZE, hdr);
                out.extend_from_slice(&dbnode.to_be_bytes());
            }
            Request::PrefetchTarget { hdr, target } => {
                put_header(out, tag::PREFETCH_TARGET, hdr);
                out.extend_from_slice(&target.udp_port.to_be_bytes());
                out.extend_from_slice(&target.key_id.to_be_bytes());
                out.extend_from_slice(&target.key);
                out.extend_from_slice(&target.path_mtu.to_be_bytes());
            }
            Request::Prefetch {
                hdr,
                rel,
                first_blkno,
                nblocks,
            } => {
                put_header(out, tag::PREFETCH, hdr);
                put_rel(out, rel);
                out.extend_from_slice(&first_blkno.to_be_bytes());
                out.extend_from_slice(&nblocks.to_be_bytes());
            }
            Request::PutPage {
                hdr,
                rel,
                blkno,
                lsn,
                page,
            } => {
                put_header(out, tag::PUT_PAGE, hdr);
                put_rel(out, rel);
                out.extend_from_slice(&blkno.to_be_bytes());
                out.extend_from_slice(&lsn.to_be_bytes());
                out.extend_from_slice(&page[..]);
            }
            Request::PrefetchPriority { hdr, priority } => {
                put_header(out, tag::PREFETCH_PRIORITY, hdr);
                out.push(priority.to_wire());
            }
        }
    }

    /// Decodes one CopyData payload.
    pub fn decode(buf: &[u8]) -> Result<Request, ProtocolError> {
        let mut r = Reader::new(buf, "pagestream request");
        let tag = r.u8()?;
        let hdr = get_header(&mut r)?;
        let req = match tag {
            tag::EXISTS => Request::Exists {
                hdr,
                rel: get_rel(&mut r)?,
            },
            tag::NBLOCKS => Request::Nblocks {
                hdr,
                rel: get_rel(&mut r)?,
            },
            tag::GET_PAGE => Request::GetPage {
                hdr,
                rel: get_rel(&mut r)?,
                blkno: r.u32()?,
            },
            tag::DB_SIZE => Request::DbSize {
                hdr,
                dbnode: r.u32()?,
            },
            tag::PREFETCH_TARGET => Request::PrefetchTarget {
                hdr,
                target: PrefetchTarget {
                    udp_port: r.u16()?,
                    key_id: r.u32()?,
                    key: r.array()?,
                    path_mtu: r.u32()?,
                },
            },
            tag::PREFETCH => Request::Prefetch {
                hdr,
                rel: get_rel(&mut r)?,
                first_blkno: r.u32()?,
                nblocks: r.u16()?,
            },
            tag::PUT_PAGE => Request::PutPage {
                hdr,
                rel: get_rel(&mut r)?,
                blkno: r.u32()?,
                lsn: r.u64()?,
                page: get_page(&mut r)?,
            },
            tag::PREFETCH_PRIORITY => Request::PrefetchPriority {
                hdr,
                priority: PrefetchPriority::from_wire(r.u8()?)?,
            },
            _ => {
                return Err(ProtocolError::Malformed {
                    what: "pagestream request",
                    why: "unknown request tag",
                })
            }
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    pub fn header(&self) -> Header {
        match self {
            Response::Exists { hdr, .. }
            | Response::Nblocks { hdr, .. }
            | Response::GetPage { hdr, .. }
            | Response::DbSize { hdr, .. }
            | Response::Error { hdr, .. }
            | Response::PrefetchTarget { hdr, .. }
            | Response::PutPage { hdr, .. }
            | Response::PrefetchPriority { hdr, .. } => *hdr,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Response::Exists { hdr, rel, exists } => {
                put_header(out, tag::EXISTS_RESPONSE, hdr);
                put_rel(out, rel);
                out.push(u8::from(*exists));
            }
            Response::Nblocks { hdr, rel, n_blocks } => {
                put_header(out, tag::NBLOCKS_RESPONSE, hdr);
                put_rel(out, rel);
                out.extend_from_slice(&n_blocks.to_be_bytes());
            }
            Response::GetPage {
                hdr,
                rel,
                blkno,
                page,
            } => encode_get_page_response(out, hdr, rel, *blkno, page),
            Response::DbSize { hdr, dbnode, size } => {
                put_header(out, tag::DB_SIZE_RESPONSE, hdr);
                out.extend_from_slice(&dbnode.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
            }
            Response::Error { hdr, message } => {
                put_header(out, tag::ERROR_RESPONSE, hdr);
                // Bounded and NUL-free so the other side can always parse it.
                let mut len = 0;
                for c in message.chars().filter(|&c| c != '\0') {
                    len += c.len_utf8();
                    if len > MAX_ERROR_MESSAGE_LEN {
                        break;
                    }
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                out.push(0);
            }
            Response::PrefetchTarget { hdr, udp_port } => {
                put_header(out, tag::PREFETCH_TARGET_RESPONSE, hdr);
                out.extend_from_slice(&udp_port.to_be_bytes());
            }
            Response::PutPage {
                hdr,
                rel,
                blkno,
                lsn,
            } => {
                put_header(out, tag::PUT_PAGE_RESPONSE, hdr);
                put_rel(out, rel);
                out.extend_from_slice(&blkno.to_be_bytes());
                out.extend_from_slice(&lsn.to_be_bytes());
            }
            Response::PrefetchPriority { hdr, priority } => {
                put_header(out, tag::PREFETCH_PRIORITY_RESPONSE, hdr);
                out.push(priority.to_wire());
            }
        }
    }

    /// Decodes one CopyData payload.
    pub fn decode(buf: &[u8]) -> Result<Response, ProtocolError> {
        let mut r = Reader::new(buf, "pagestream response");
        let tag = r.u8()?;
        let hdr = get_header(&mut r)?;
        let resp = match tag {
            tag::EXISTS_RESPONSE => Response::Exists {
                hdr,
                rel: get_rel(&mut r)?,
                exists: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(ProtocolError::Malformed {
                            what: "exists response",
                            why: "flag is neither 0 nor 1",
                        })
                    }
                },
            },
            tag::NBLOCKS_RESPONSE => Response::Nblocks {
                hdr,
                rel: get_rel(&mut r)?,
                n_blocks: r.u32()?,
            },
            tag::GET_PAGE_RESPONSE => Response::GetPage {
                hdr,
                rel: get_rel(&mut r)?,
                blkno: r.u32()?,
                page: get_page(&mut r)?,
            },
            tag::DB_SIZE_RESPONSE => Response::DbSize {
                hdr,
                dbnode: r.u32()?,
                size: r.i64()?,
            },
            tag::ERROR_RESPONSE => {
                let message = r.cstr()?;
                if message.len() > MAX_ERROR_MESSAGE_LEN {
                    return Err(ProtocolError::Malformed {
                        what: "error response",
                        why: "message too long",
                    });
                }
                Response::Error { hdr, message }
            }
            tag::PREFETCH_TARGET_RESPONSE => Response::PrefetchTarget {
                hdr,
                udp_port: r.u16()?,
            },
            tag::PUT_PAGE_RESPONSE => Response::PutPage {
                hdr,
                rel: get_rel(&mut r)?,
                blkno: r.u32()?,
                lsn: r.u64()?,
            },
            tag::PREFETCH_PRIORITY_RESPONSE => Response::PrefetchPriority {
                hdr,
                priority: PrefetchPriority::from_wire(r.u8()?)?,
            },
            _ => {
                return Err(ProtocolError::Malformed {
                    what: "pagestream response",
                    why: "unknown response tag",
                })
            }
        };
        r.finish()?;
        Ok(resp)
    }
}

/// Encodes a GetPage response from a borrowed page, so the server never copies a page into an
/// owned `Response` just to serialise it.
pub fn encode_get_page_response(
    out: &mut Vec<u8>,
    hdr: &Header,
    rel: &RelTag,
    blkno: u32,
    page: &Page,
) {
    put_header(out, tag::GET_PAGE_RESPONSE, hdr);
    put_rel(out, rel);
    out.extend_from_slice(&blkno.to_be_bytes());
    out.extend_from_slice(&page[..]);
}

fn put_header(out: &mut Vec<u8>, tag: u8, hdr: &Header) {
    out.push(tag);
    out.extend_from_slice(&hdr.reqid.to_be_bytes());
    out.extend_from_slice(&hdr.request_lsn.to_be_bytes());
    out.extend_from_slice(&hdr.not_modified_since.to_be_bytes());
}

fn put_rel(out: &mut Vec<u8>, rel: &RelTag) {
    out.extend_from_slice(&rel.spcnode.to_be_bytes());
    out.extend_from_slice(&rel.dbnode.to_be_bytes());
    out.extend_from_slice(&rel.relnode.to_be_bytes());
    out.push(rel.forknum);
}

fn get_header(r: &mut Reader<'_>) -> Result<Header, ProtocolError> {
    Ok(Header {
        reqid: r.u64()?,
        request_lsn: r.u64()?,
        not_modified_since: r.u64()?,
    })
}

fn get_rel(r: &mut Reader<'_>) -> Result<RelTag, ProtocolError> {
    let rel = RelTag::new(r.u32()?, r.u32()?, r.u32()?, r.u8()?);
    if rel.forknum > MAX_FORKNUM {
        return Err(ProtocolError::Malformed {
            what: "relation",
            why: "fork number out of range",
        });
    }
    Ok(rel)
}

fn get_page(r: &mut Reader<'_>) -> Result<Box<Page>, ProtocolError> {
    let bytes = r.bytes(PAGE_SIZE)?;
    // Copied into a fresh allocation, not into a zeroed one: zeroing 8 KiB first was 3 % of a
    // TCP-reading backend's CPU.
    Ok(Box::<[u8]>::from(bytes)
        .try_into()
        .expect("Reader::bytes returned PAGE_SIZE bytes"))
}

#[cfg(test)]
mod tests;
