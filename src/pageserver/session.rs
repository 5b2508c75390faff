//! The sans-IO core of one pagestream session (ARCHITECTURE §4, steps 0–2): what the page server
//! does with each request of a connection. The real connection threads (`conn.rs`) and the
//! simulator's page server (`sim/src/world/server.rs`) both drive it; neither keeps a copy of
//! its logic.
//!
//! Split as quinn splits `quinn-proto` from its sockets. The reader hands each decoded request
//! to [`Session::route`] with the time it arrived. A PrefetchTarget is registered there (its
//! answer encoded for the responder), a Prefetch becomes a push for the prefetch senders
//! ([`Routed::Prefetch`], no TCP answer), and everything else becomes a [`Work`] for the
//! responder, due at arrival + service delay. The responder calls [`Work::answer`] for each in
//! turn: it encodes the response, or says which WAL position to wait for and until when
//! ([`Answer::WaitForWal`]). The shell does the waiting: a condvar in the server, a virtual-time
//! event in the simulator.
//!
//! Owns: the session's prefetch destination, the requests' due times, the bounded wait for WAL
//! (the deadline comes from `PageStore::lsn_wait_timeout`), the per-request counters of
//! `ServerStats`, and every response's encoding. Reads no clock (`now_ns` is passed in), opens
//! no socket, never sleeps or blocks, and draws no randomness (the shell hands in each new
//! datagram stream's id).

use super::prefetch::{ConnId, Destination};
use super::stats::{bump, RequestKind, ServerStats};
use super::store::{PageStore, StoreError};
use crate::protocol::page::Page;
use crate::protocol::pagestream::{
    self, Header, PrefetchPriority, PrefetchTarget, Request, Response,
};
use crate::protocol::pgwire::{sqlstate, ErrorFields};
use crate::protocol::shard::ShardIdentity;
use lfc::{BufferTag, RelTag};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use workers::datagram::{fragments_for_mtu, min_path_mtu, DatagramKey, Protection, STREAM_ID_LEN};

/// What a session needs from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Emulated storage latency: no response, and no prefetched page, leaves before a request's
    /// arrival + this.
    pub service_delay_ns: u64,
    /// How prefetch datagrams are protected (`workers::datagram` explains the choice).
    pub protection: Protection,
    /// Which pages this server owns (`--shard I/N`): a GetPage or Prefetch of another shard's
    /// page is refused, naming its owner.
    pub shard: ShardIdentity,
}

/// One connection's pagestream session: where its prefetches go.
#[derive(Debug)]
pub struct Session {
    conn: ConnId,
    /// The TCP peer's address: the only IP its prefetches may go to.
    peer_ip: Option<IpAddr>,
    config: SessionConfig,
    target: Option<Destination>,
    /// How the senders rank this connection's prefetches (a PrefetchPriority request); kept
    /// here too for a target registered after it.
    priority: PrefetchPriority,
}

/// What the reader does with one request.
#[derive(Debug)]
pub enum Routed<'s> {
    /// Queue these pages for the prefetch senders (`PrefetchScheduler::push`), not to be sent
    /// before `due_ns`. No TCP answer, whatever becomes of them.
    Prefetch {
        dest: &'s Destination,
        hdr: Header,
        rel: RelTag,
        first_blkno: u32,
        nblocks: u16,
        due_ns: u64,
    },
    /// Nothing more to do: a Prefetch that came before any PrefetchTarget (counted, dropped).
    Dropped,
    /// The responder answers this in its turn.
    Respond(Work),
}

/// A request with a TCP response, waiting for the responder.
#[derive(Debug)]
pub struct Work {
    arrived_ns: u64,
    due_ns: u64,
    what: WorkKind,
    /// When this request first found WAL behind its LSN (the start of its bounded wait).
    wal_wait_since_ns: Option<u64>,
}

#[derive(Debug)]
enum WorkKind {
    /// A request the responder serves from the store.
    Request {
        req: Request,
        /// Where this connection's prefetches went when the request arrived: a GetPage of a
        /// page still queued for it there makes that prefetch needless.
        prefetch_dest: Option<SocketAddr>,
    },
    /// A response the reader already encoded (a PrefetchTarget registration), sent in turn.
    Reply(Vec<u8>),
}

/// What became of one call of [`Work::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The response is in the frame: send it.
    Ready,
    /// WAL has not reached `lsn`: call `answer` again once it has, or at `deadline_ns` (it then
    /// answers with the timeout error). The responder sends nothing else meanwhile: responses
    /// leave in request order.
    WaitForWal { lsn: u64, deadline_ns: u64 },
}

impl Session {
    /// A session of connection `conn`, whose TCP peer is `peer_ip` (`None` if unknown: no
    /// prefetch target can be registered then).
    pub fn new(conn: ConnId, peer_ip: Option<IpAddr>, config: SessionConfig) -> Session {
        Session {
            conn,
            peer_ip,
            config,
            target: None,
            priority: PrefetchPriority::Foreground,
        }
    }

    /// Where this session's prefetches go, once a PrefetchTarget registered it.
    pub fn target(&self) -> Option<&Destination> {
        self.target.as_ref()
    }

    /// The reader's part of a request that arrived at `now_ns`. `new_stream_id` is called once
    /// per PrefetchTarget for the id of the datagram stream it opens (random in the server,
    /// seeded in the simulator).
    pub fn route<E: std::fmt::Display>(
        &mut self,
        req: Request,
        now_ns: u64,
        stats: &ServerStats,
        new_stream_id: impl FnOnce() -> Result<[u8; STREAM_ID_LEN], E>,
    ) -> Routed<'_> {
        let due_ns = now_ns.saturating_add(self.config.service_delay_ns);
        if let Some(reply) = self.refuse_other_shards(&req, stats) {
            return Routed::Respond(Work {
                arrived_ns: now_ns,
                due_ns,
                what: WorkKind::Reply(reply),
                wal_wait_since_ns: None,
            });
        }
        let what = match req {
            Request::Prefetch {
                hdr,
                rel,
                first_blkno,
                nblocks,
            } => {
                bump(&stats.prefetch);
                return match &self.target {
                    Some(dest) => Routed::Prefetch {
                        dest,
                        hdr,
                        rel,
                        first_blkno,
                        nblocks,
                        due_ns,
                    },
                    None => {
                        stats.on_prefetch_without_target(nblocks);
                        Routed::Dropped
                    }
                };
            }
            Request::PrefetchTarget { hdr, target } => {
                WorkKind::Reply(self.register_target(hdr, &target, stats, new_stream_id))
            }
            Request::PrefetchPriority { hdr, priority } => {
                bump(&stats.prefetch_priority);
                self.priority = priority;
                if let Some(dest) = &mut self.target {
                    dest.priority = priority;
                }
                let mut frame = Vec::new();
                Response::PrefetchPriority { hdr, priority }.encode(&mut frame);
                WorkKind::Reply(frame)
            }
            req => WorkKind::Request {
                req,
                prefetch_dest: self.target.as_ref().map(|d| d.addr),
            },
        };
        Routed::Respond(Work {
            arrived_ns: now_ns,
            due_ns,
            what,
            wal_wait_since_ns: None,
        })
    }

    /// The error answer to a GetPage or Prefetch of a page another shard owns (`None` for
    /// everything else). A Prefetch is checked block by block (stripe by stripe): a range that
    /// strays into another shard's stripe is refused whole, naming the first stranger's owner.
    /// A compute that does this routes with another shard map than the servers': saying so
    /// beats serving pages this shard does not keep current.
    fn refuse_other_shards(&self, req: &Request, stats: &ServerStats) -> Option<Vec<u8>> {
        let me = self.config.shard;
        if me.layout().count() < 2 {
            return None;
        }
        let (hdr, tag, owner, kind) = match req {
            Request::GetPage { hdr, rel, blkno } => {
                let tag = rel.block(*blkno);
                (*hdr, tag, me.owner_if_other(&tag)?, RequestKind::GetPage)
            }
            Request::Prefetch {
                hdr,
                rel,
                first_blkno,
                nblocks,
            } => {
                let end = first_blkno.saturating_add(u32::from(*nblocks));
                let (owner, blocks) = me
                    .layout()
                    .split(*rel, *first_blkno..end)
                    .find(|(owner, _)| *owner != me.number())?;
                (*hdr, rel.block(blocks.start), owner, RequestKind::Prefetch)
            }
            _ => return None,
        };
        bump(match kind {
            RequestKind::GetPage => &stats.get_page,
            _ => &stats.prefetch,
        });
        bump(&stats.wrong_shard);
        stats.on_error(kind);
        let layout = me.layout();
        let message = format!(
            "{tag} belongs to shard {owner}/{count} (stripes of {stripe} pages), not to this \
             page server, shard {me}: send it to shard {owner}'s page server",
            count = layout.count(),
            stripe = layout.stripe_pages(),
        );
        let mut frame = Vec::new();
        Response::Error { hdr, message }.encode(&mut frame);
        Some(frame)
    }

    /// A PrefetchTarget: registers where this session's prefetches go; returns the encoded
    /// answer (or pagestream error).
    fn register_target<E: std::fmt::Display>(
        &mut self,
        hdr: Header,
        t: &PrefetchTarget,
        stats: &ServerStats,
        new_stream_id: impl FnOnce() -> Result<[u8; STREAM_ID_LEN], E>,
    ) -> Vec<u8> {
        bump(&stats.prefetch_target);
        let result = match self.peer_ip {
            // The destination is always the TCP peer's own address: the server never sends UDP
            // where a client points it, so it cannot be used to reflect traffic. Every
            // registration opens a new datagram stream (fresh id, nonces from 0).
            Some(ip) if t.udp_port != 0 => {
                match (fragments_for_mtu(t.path_mtu, ip.is_ipv6()), new_stream_id()) {
                    (None, _) => Err(format!(
                        "invalid prefetch target: path MTU {} is too small for page datagrams \
                         (at least {} bytes)",
                        t.path_mtu,
                        min_path_mtu(ip.is_ipv6())
                    )),
                    (Some(fragments), Ok(stream_id)) => {
                        let key = DatagramKey::new(t.key_id, t.key);
                        let stream = key
                            .stream_with(stream_id, self.config.protection)
                            .with_fragments(fragments);
                        self.target = Some(Destination {
                            addr: SocketAddr::new(ip, t.udp_port),
                            key: Arc::new(stream),
                            conn: self.conn,
                            priority: self.priority,
                        });
                        Ok(())
                    }
                    (_, Err(e)) => Err(format!("cannot register a prefetch target: {e}")),
                }
            }
            Some(_) => Err("invalid prefetch target: UDP port 0".to_string()),
            None => {
                Err("invalid prefetch target: the connection's peer address is unknown".to_string())
            }
        };
        let mut frame = Vec::new();
        match result {
            Ok(()) => Response::PrefetchTarget {
                hdr,
                udp_port: t.udp_port,
            }
            .encode(&mut frame),
            Err(message) => {
                stats.on_error(RequestKind::PrefetchTarget);
                Response::Error { hdr, message }.encode(&mut frame);
            }
        }
        frame
    }
}

impl Work {
    /// When the request arrived (the `now_ns` given to `route`).
    pub fn arrived_ns(&self) -> u64 {
        self.arrived_ns
    }

    /// Not to be answered before this: arrival + the service delay.
    pub fn due_ns(&self) -> u64 {
        self.due_ns
    }

    /// When this request began waiting for WAL, if it has.
    pub fn wal_wait_since_ns(&self) -> Option<u64> {
        self.wal_wait_since_ns
    }

    /// The request, unless this is an answer the reader already encoded (PrefetchTarget).
    pub fn request(&self) -> Option<&Request> {
        match &self.what {
            WorkKind::Request { req, .. } => Some(req),
            WorkKind::Reply(_) => None,
        }
    }

    /// Answers at `now_ns` into `frame` (cleared first), or says how long to wait for WAL.
    /// A GetPage reports its page to `fetched` on the first call (the senders may skip a queued
    /// prefetch of it, `PrefetchScheduler::on_get_page`), before any wait.
    pub fn answer(
        &mut self,
        store: &PageStore,
        stats: &ServerStats,
        now_ns: u64,
        page: &mut Page,
        frame: &mut Vec<u8>,
        fetched: impl FnOnce(SocketAddr, BufferTag),
    ) -> Answer {
        frame.clear();
        let (req, prefetch_dest) = match &self.what {
            WorkKind::Reply(reply) => {
                frame.extend_from_slice(reply);
                return Answer::Ready;
            }
            WorkKind::Request { req, prefetch_dest } => (req, *prefetch_dest),
        };
        if self.wal_wait_since_ns.is_none() {
            // The first call (a request that waits for WAL is counted and reported once).
            count_request(req, stats);
            if let (Some(addr), Request::GetPage { rel, blkno, .. }) = (prefetch_dest, req) {
                fetched(addr, rel.block(*blkno));
            }
        }
        let hdr = req.header();
        let result = match req {
            // A new version stands in for WAL ingest: it waits for nothing.
            Request::PutPage { .. } => serve(req, store, hdr.request_lsn, page, frame),
            _ => match self.effective_lsn(store, hdr, now_ns) {
                Ok(Some(lsn)) => serve(req, store, lsn, page, frame),
                Ok(None) => {
                    let since = *self.wal_wait_since_ns.get_or_insert(now_ns);
                    return Answer::WaitForWal {
                        lsn: hdr.not_modified_since,
                        deadline_ns: wal_deadline_ns(store, since),
                    };
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            stats.on_error(RequestKind::of(req));
            frame.clear();
            Response::Error {
                hdr,
                message: e.to_string(),
            }
            .encode(frame);
        }
        Answer::Ready
    }

    /// `PageStore::effective_lsn` without the wait: the LSN to answer at, `None` while WAL is
    /// behind `not_modified_since` and the wait has time left, the timeout error once not.
    fn effective_lsn(
        &self,
        store: &PageStore,
        hdr: Header,
        now_ns: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(lsn) = store.try_effective_lsn(hdr.request_lsn, hdr.not_modified_since)? else {
            return match self.wal_wait_since_ns {
                Some(since) if now_ns >= wal_deadline_ns(store, since) => {
                    Err(StoreError::WaitLsnTimeout {
                        wanted: hdr.not_modified_since,
                        last: store.last_record_lsn(),
                        waited_ms: (now_ns - since) / 1_000_000,
                    })
                }
                _ => Ok(None),
            };
        };
        Ok(Some(lsn))
    }
}

/// What a page server without this project's extension (`ServerConfig::udp_extension` off)
/// answers a pagestream message of the extension (PrefetchTarget, Prefetch, PutPage): `None`
/// for any other message, decoded as usual.
///
/// It is what Neon's page server answers any tag it does not know. `PagestreamFeMessage::parse`
/// (`libs/pageserver_api/src/pagestream_api.rs`) reads the tag and the common header, then fails
/// with `anyhow!("invalid tag {tag}")`; the page service (`pageserver/src/page_service.rs`)
/// returns that from the pagestream as `QueryError::Other`, after the batch it already read is
/// answered, and `postgres_backend` sends it as an ErrorResponse with severity ERROR, SQLSTATE
/// XX000 and the message alone, then ReadyForQuery: the copy-both stream is over and the
/// connection reads simple queries again (where a CopyData closes it). A message too short for
/// the header fails there before its tag is looked at (a malformed message, as here).
pub fn refused_without_extension(payload: &[u8]) -> Option<ErrorFields> {
    let &tag = payload.first()?;
    let extension = matches!(
        tag,
        pagestream::tag::PREFETCH_TARGET
            | pagestream::tag::PREFETCH
            | pagestream::tag::PUT_PAGE
            | pagestream::tag::PREFETCH_PRIORITY
    );
    (extension && payload.len() >= pagestream::HEADER_LEN).then(|| unknown_tag_error(tag))
}

/// Neon's ErrorResponse for a pagestream tag it does not know.
pub fn unknown_tag_error(tag: u8) -> ErrorFields {
    ErrorFields::error(sqlstate::INTERNAL_ERROR, format!("invalid tag {tag}"))
}

/// The end of a wait for WAL that began at `since_ns`.
fn wal_deadline_ns(store: &PageStore, since_ns: u64) -> u64 {
    since_ns.saturating_add(store.lsn_wait_timeout().as_nanos() as u64)
}

fn count_request(req: &Request, stats: &ServerStats) {
    bump(match req {
        Request::Exists { .. } => &stats.exists,
        Request::Nblocks { .. } => &stats.nblocks,
        Request::GetPage { .. } => &stats.get_page,
        Request::DbSize { .. } => &stats.db_size,
        Request::PutPage { .. } => &stats.put_page,
        Request::PrefetchTarget { .. }
        | Request::PrefetchPriority { .. }
        | Request::Prefetch { .. } => {
            unreachable!("the reader routes prefetch requests")
        }
    });
}

/// Serves one request from the store at `lsn` (what WAL allows; unused by PutPage), encoding
/// the response into `frame`. GetPage is served here (`pagestream::encode_get_page_response`).
fn serve(
    req: &Request,
    store: &PageStore,
    lsn: u64,
    page: &mut Page,
    frame: &mut Vec<u8>,
) -> Result<(), StoreError> {
    let hdr = req.header();
    let response = match req {
        Request::GetPage { rel, blkno, .. } => {
            store.read_page(rel.block(*blkno), lsn, page)?;
            pagestream::encode_get_page_response(frame, &hdr, rel, *blkno, page);
            return Ok(());
        }
        Request::Exists { rel, .. } => Response::Exists {
            hdr,
            rel: *rel,
            exists: store.exists(*rel)?,
        },
        Request::Nblocks { rel, .. } => Response::Nblocks {
            hdr,
            rel: *rel,
            n_blocks: store
                .nblocks(*rel)?
                .ok_or(StoreError::NoSuchRelation(*rel))?,
        },
        Request::DbSize { dbnode, .. } => Response::DbSize {
            hdr,
            dbnode: *dbnode,
            size: store.db_size(*dbnode)?,
        },
        Request::PutPage {
            rel,
            blkno,
            lsn: put_lsn,
            page: new,
            ..
        } => {
            store.put_page(rel.block(*blkno), *put_lsn, new)?;
            Response::PutPage {
                hdr,
                rel: *rel,
                blkno: *blkno,
                lsn: *put_lsn,
            }
        }
        Request::PrefetchTarget { .. }
        | Request::PrefetchPriority { .. }
        | Request::Prefetch { .. } => {
            unreachable!("the reader routes prefetch requests")
        }
    };
    response.encode(frame);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pageserver::source::{SourceSpec, Synthetic};
    use crate::protocol::page::{page_lsn, synthetic_page};
    use crate::protocol::pagestream::LATEST_LSN;
    use lfc::PAGE_SIZE;
    use std::convert::Infallible;
    use std::time::Duration;

    const MS: u64 = 1_000_000;
    const DELAY_NS: u64 = 7_000;

    fn store() -> PageStore {
        let source = SourceSpec::Synthetic { rels: 1, pages: 8 }.open().unwrap();
        PageStore::new(source, 16, Duration::from_millis(5))
    }

    fn session() -> Session {
        let config = SessionConfig {
            service_delay_ns: DELAY_NS,
            protection: Protection::default(),
            shard: ShardIdentity::SINGLE,
        };
        Session::new(3, Some(IpAddr::from([10, 0, 0, 1])), config)
    }

    fn stream_id() -> Result<[u8; STREAM_ID_LEN], Infallible> {
        Ok([7; STREAM_ID_LEN])
    }

    fn target_request(udp_port: u16) -> Request {
        Request::PrefetchTarget {
            hdr: Header::default(),
            target: PrefetchTarget {
                udp_port,
                key_id: 1,
                key: [2; 32],
                path_mtu: 0,
            },
        }
    }

    fn prefetch_request() -> Request {
        Request::Prefetch {
            hdr: Header::default(),
            rel: Synthetic::rel(0),
            first_blkno: 2,
            nblocks: 3,
        }
    }

    fn get_page(blkno: u32, not_modified_since: u64) -> Request {
        let hdr = Header {
            reqid: 1,
            request_lsn: LATEST_LSN,
            not_modified_since,
        };
        let rel = Synthetic::rel(0);
        Request::GetPage { hdr, rel, blkno }
    }

    fn respond(routed: Routed<'_>) -> Work {
        match routed {
            Routed::Respond(work) => work,
            other => panic!("expected work for the responder, got {other:?}"),
        }
    }

    /// Answers `work` at `now`; the response decoded, and the pages reported as fetched.
    fn answer(work: &mut Work, store: &PageStore, now: u64) -> (Answer, Vec<BufferTag>, Vec<u8>) {
        let mut page = Box::new([0u8; PAGE_SIZE]);
        let mut frame = Vec::new();
        let mut fetched = Vec::new();
        let stats = ServerStats::default();
        let a = work.answer(store, &stats, now, &mut page, &mut frame, |_, t| {
            fetched.push(t)
        });
        (a, fetched, frame)
    }

    #[test]
    fn without_the_extension_its_tags_get_neons_unknown_tag_error() {
        let mut frame = Vec::new();
        target_request(9).encode(&mut frame);
        let err = refused_without_extension(&frame).expect("refused");
        assert_eq!(
            (
                err.severity.as_str(),
                err.code.as_str(),
                err.message.as_str()
            ),
            ("ERROR", "XX000", "invalid tag 64")
        );
        frame.clear();
        prefetch_request().encode(&mut frame);
        assert_eq!(
            refused_without_extension(&frame).unwrap().message,
            "invalid tag 65"
        );
        // Neon's own requests are served; a message too short for the header is malformed.
        frame.clear();
        let (hdr, rel) = (Header::default(), Synthetic::rel(0));
        Request::GetPage { hdr, rel, blkno: 0 }.encode(&mut frame);
        assert!(refused_without_extension(&frame).is_none());
        assert!(refused_without_extension(&[pagestream::tag::PUT_PAGE, 0]).is_none());
    }

    #[test]
    fn prefetches_go_to_the_registered_peer_and_are_due_after_the_service_delay() {
        let stats = ServerStats::default();
        let mut s = session();
        assert!(matches!(
            s.route(prefetch_request(), 100, &stats, stream_id),
            Routed::Dropped
        ));
        assert_eq!(stats.prefetch_dropped_no_target.load(Ordering::Relaxed), 1);
        let mut reply = respond(s.route(target_request(6000), 200, &stats, stream_id));
        assert_eq!(reply.due_ns(), 200 + DELAY_NS);
        let (a, _, frame) = answer(&mut reply, &store(), 300);
        assert_eq!(a, Answer::Ready);
        assert!(matches!(
            Response::decode(&frame).unwrap(),
            Response::PrefetchTarget { udp_port: 6000, .. }
        ));
        match s.route(prefetch_request(), 400, &stats, stream_id) {
            Routed::Prefetch {
                dest,
                first_blkno: 2,
                nblocks: 3,
                due_ns,
                ..
            } => {
                // The TCP peer's own IP, never one the client names.
                assert_eq!(dest.addr, SocketAddr::from(([10, 0, 0, 1], 6000)));
                assert_eq!(dest.conn, 3);
                assert_eq!(dest.key.stream_id(), [7; STREAM_ID_LEN]);
                assert_eq!(due_ns, 400 + DELAY_NS);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_prefetch_priority_is_answered_and_ranks_the_connections_prefetches() {
        let stats = ServerStats::default();
        let priority = |priority| Request::PrefetchPriority {
            hdr: Header::default(),
            priority,
        };
        let dest_priority =
            |s: &mut Session| match s.route(prefetch_request(), 0, &stats, stream_id) {
                Routed::Prefetch { dest, .. } => dest.priority,
                other => panic!("{other:?}"),
            };
        // Before the target: the target registered after it takes it.
        let mut s = session();
        let mut reply =
            respond(s.route(priority(PrefetchPriority::Background), 0, &stats, stream_id));
        let (a, _, frame) = answer(&mut reply, &store(), 0);
        assert_eq!(a, Answer::Ready);
        assert_eq!(
            Response::decode(&frame).unwrap(),
            Response::PrefetchPriority {
                hdr: Header::default(),
                priority: PrefetchPriority::Background
            }
        );
        respond(s.route(target_request(6000), 0, &stats, stream_id));
        assert_eq!(dest_priority(&mut s), PrefetchPriority::Background);
        // After it: the registered target changes, both ways.
        let mut s = session();
        respond(s.route(target_request(6000), 0, &stats, stream_id));
        assert_eq!(dest_priority(&mut s), PrefetchPriority::Foreground);
        respond(s.route(priority(PrefetchPriority::Background), 0, &stats, stream_id));
        assert_eq!(dest_priority(&mut s), PrefetchPriority::Background);
        respond(s.route(priority(PrefetchPriority::Foreground), 0, &stats, stream_id));
        assert_eq!(dest_priority(&mut s), PrefetchPriority::Foreground);
        assert_eq!(stats.prefetch_priority.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_target_without_a_port_or_peer_is_an_error_and_registers_nothing() {
        let stats = ServerStats::default();
        let mut s = session();
        let mut reply = respond(s.route(target_request(0), 0, &stats, stream_id));
        let (_, _, frame) = answer(&mut reply, &store(), 0);
        assert!(matches!(
            Response::decode(&frame).unwrap(),
            Response::Error { .. }
        ));
        assert!(s.target().is_none());
        let config = SessionConfig {
            service_delay_ns: 0,
            protection: Protection::default(),
            shard: ShardIdentity::SINGLE,
        };
        let mut no_peer = Session::new(1, None, config);
        respond(no_peer.route(target_request(6000), 0, &stats, stream_id));
        assert!(no_peer.target().is_none());
        let mut no_randomness = session();
        let failing = || Err::<[u8; STREAM_ID_LEN], _>("no randomness");
        respond(no_randomness.route(target_request(6000), 0, &stats, failing));
        assert!(no_randomness.target().is_none());
    }

    #[test]
    fn a_get_page_waits_for_wal_then_is_served_and_reported_once() {
        let stats = ServerStats::default();
        let store = store();
        let mut s = session();
        respond(s.route(target_request(6000), 0, &stats, stream_id));
        let mut work = respond(s.route(get_page(1, 300), 10, &stats, stream_id));
        let (a, fetched, _) = answer(&mut work, &store, 20);
        assert_eq!(
            a,
            Answer::WaitForWal {
                lsn: 300,
                deadline_ns: 20 + 5 * MS
            }
        );
        assert_eq!(fetched, [Synthetic::rel(0).block(1)]);
        let tag = Synthetic::rel(0).block(1);
        store.put_page(tag, 300, &synthetic_page(tag, 300)).unwrap();
        let (a, fetched, frame) = answer(&mut work, &store, 30);
        assert_eq!(a, Answer::Ready);
        assert!(fetched.is_empty(), "reported on the first call only");
        match Response::decode(&frame).unwrap() {
            Response::GetPage { page, blkno: 1, .. } => assert_eq!(page_lsn(&page), 300),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wal_wait_ends_in_the_timeout_error_at_its_deadline() {
        let stats = ServerStats::default();
        let store = store();
        let mut work = respond(session().route(get_page(1, 300), 0, &stats, stream_id));
        assert!(matches!(
            answer(&mut work, &store, 0).0,
            Answer::WaitForWal { .. }
        ));
        assert!(matches!(
            answer(&mut work, &store, 5 * MS - 1).0,
            Answer::WaitForWal { .. }
        ));
        let (a, _, frame) = answer(&mut work, &store, 5 * MS);
        assert_eq!(a, Answer::Ready);
        match Response::decode(&frame).unwrap() {
            Response::Error { message, .. } => assert!(message.contains("timed out"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_put_page_waits_for_nothing_and_advances_wal() {
        let stats = ServerStats::default();
        let store = store();
        let tag = Synthetic::rel(0).block(2);
        let put = Request::PutPage {
            hdr: Header::default(),
            rel: tag.rel,
            blkno: tag.blkno,
            lsn: 500,
            page: synthetic_page(tag, 500),
        };
        let mut work = respond(session().route(put, 0, &stats, stream_id));
        let (a, _, frame) = answer(&mut work, &store, 0);
        assert_eq!(a, Answer::Ready);
        assert!(matches!(
            Response::decode(&frame).unwrap(),
            Response::PutPage { lsn: 500, .. }
        ));
        assert_eq!(store.last_record_lsn(), 500);
    }

    use std::sync::atomic::Ordering;

    #[test]
    fn a_shard_refuses_other_shards_pages_naming_the_owner_and_serves_the_rest() {
        use crate::protocol::shard::ShardLayout;
        // Stripes of 2 pages over 3 shards: blocks 0..8 of the synthetic relation belong to
        // several shards (found through the routing function, not assumed).
        let layout = ShardLayout::new(3, 2).unwrap();
        let rel = Synthetic::rel(0);
        let owner = |b: u32| layout.shard_of(&rel.block(b));
        let me = owner(0);
        let foreign = (0..8)
            .find(|&b| owner(b) != me)
            .expect("8 blocks span two shards");
        let config = SessionConfig {
            service_delay_ns: DELAY_NS,
            protection: Protection::default(),
            shard: ShardIdentity::new(me, layout).unwrap(),
        };
        let stats = ServerStats::default();
        let mut s = Session::new(3, Some(IpAddr::from([10, 0, 0, 1])), config);
        let store = store();
        // Its own page is served.
        let mut work = respond(s.route(get_page(0, 0), 100, &stats, stream_id));
        let (_, _, frame) = answer(&mut work, &store, 200);
        assert!(matches!(
            Response::decode(&frame).unwrap(),
            Response::GetPage { blkno: 0, .. }
        ));
        // Another shard's: error 103 naming the owner.
        let mut work = respond(s.route(get_page(foreign, 0), 100, &stats, stream_id));
        let (_, fetched, frame) = answer(&mut work, &store, 200);
        assert!(fetched.is_empty(), "a refused GetPage reads nothing");
        match Response::decode(&frame).unwrap() {
            Response::Error { message, .. } => {
                let owner = owner(foreign);
                assert!(
                    message.contains(&format!("belongs to shard {owner}/3"))
                        && message.contains(&format!("shard {me}/3")),
                    "{message}"
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
        // A Prefetch is refused if any of its blocks strays; Nblocks is served by every shard.
        respond(s.route(target_request(6000), 100, &stats, stream_id));
        let prefetch = |first_blkno, nblocks| Request::Prefetch {
            hdr: Header::default(),
            rel,
            first_blkno,
            nblocks,
        };
        let own_run = (0..8).take_while(|&b| owner(b) == me).count() as u16;
        assert!(matches!(
            s.route(prefetch(0, own_run), 100, &stats, stream_id),
            Routed::Prefetch { .. }
        ));
        let mut work = respond(s.route(prefetch(0, 8), 100, &stats, stream_id));
        let (_, _, frame) = answer(&mut work, &store, 200);
        assert!(matches!(
            Response::decode(&frame).unwrap(),
            Response::Error { .. }
        ));
        let nblocks = Request::Nblocks {
            hdr: Header {
                reqid: 2,
                request_lsn: LATEST_LSN,
                not_modified_since: 0,
            },
            rel,
        };
        let mut work = respond(s.route(nblocks, 100, &stats, stream_id));
        let (_, _, frame) = answer(&mut work, &store, 200);
        assert!(matches!(
            Response::decode(&frame).unwrap(),
            Response::Nblocks { n_blocks: 8, .. }
        ));
        assert_eq!(stats.wrong_shard.load(Ordering::Relaxed), 2);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 2);
    }
}
