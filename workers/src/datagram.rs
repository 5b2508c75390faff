//! The UDP prefetch datagram (ARCHITECTURE §4 step 4): a fixed 96-byte header, the 8192-byte page
//! (or one equal piece of it, a *fragment*), and a 16-byte trailer. Two protections share the
//! layout, named by the flags byte:
//!
//! - **token** (flags 0, the default): the page travels in the clear; the trailer is the
//!   stream's 128-bit token and the header carries an XXH3-64 checksum of header and page.
//! - **aead** (flags 1): the page travels AES-128-GCM encrypted and the trailer is the GCM tag
//!   over header (associated data) and page; the checksum field is zero.
//!
//! Fixed sizes let a worker receive the page straight into a cache slot with a three-part
//! scatter list (`[header | slot | trailer]`) and check (or decrypt) it there. All integers are
//! big-endian.
//!
//! # Fragments
//!
//! A path whose MTU cannot carry 8304 bytes (a 1500-byte Ethernet) gets each page as
//! `count` datagrams, `count` a power of two up to [`MAX_FRAGMENTS`], each carrying the
//! `PAGE_SIZE / count` bytes at offset `index × PAGE_SIZE / count` (1024 bytes, 8 fragments for
//! MTU 1500: [`fragments_for_mtu`]). Each fragment is a complete datagram of its own: the same
//! header (with its index and count), its piece of the page, its own trailer, sealed with its
//! own counter (a page takes `count` consecutive counter values, fragment `index` the base +
//! `index`), so it is authenticated alone and a forged or corrupt fragment is turned away
//! before it touches anything. The receiver joins a page's fragments by stream id and base
//! counter (`counter - index`). Equal sizes keep a batch one GSO send, and keep the block
//! number at offset 52 (the receive steering) in every fragment, so one thread gets them all.
//! A whole page is `count = 1`, exactly the unfragmented datagram.
//!
//! A split page is followed by one more datagram of the same size, its *parity piece* (index =
//! `count`, the next counter): the XOR of its `count` pieces. Splitting multiplies a page's
//! exposure to loss by its datagram count (at 5 % packet loss, 8 fragments all arrive for only
//! 66 % of pages); with the parity piece any one lost datagram of the nine is rebuilt by the
//! receiver (93 % of pages), for 12.5 % more bytes.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "UDPF"
//!      4     1  format version (7)
//!      5     1  flags: protection, 0 token, 1 aead
//!      6     1  fragment index (0 for a whole page; = count for the parity piece)
//!      7     1  fragment count: 1 (a whole page) or a power of two up to 32
//!      8     4  key id
//!     12     8  reqid
//!     20     8  request_lsn
//!     28     8  not_modified_since
//!     36     4  spcnode
//!     40     4  dbnode
//!     44     4  relnode
//!     48     1  forknum
//!     49     3  reserved (0)
//!     52     4  blkno
//!     56     8  sender timestamp, ns since the Unix epoch (latency statistics only)
//!     64    16  stream id
//!     80     8  counter: the datagram's number in its stream
//!     88     8  token: XXH3-64 of the page (fragment) seeded with XXH3-64 of bytes 0..88;
//!                   aead: 0
//!     96  8192  page, or its fragment: PAGE_SIZE / count bytes (aead: AES-128-GCM ciphertext)
//!   8288    16  token: the stream token; aead: the GCM tag (at 96 + PAGE_SIZE / count)
//! ```
//!
//! # Streams, tokens and keys
//!
//! The compute's 32-byte secret (the LFC key) is never used directly. A sender opens a *stream*
//! with a fresh random 16-byte id; its token is `BLAKE3-keyed(secret, "udpf token v4" ‖ stream
//! id)[..16]` and its AES key `BLAKE3-keyed(secret, "udpf stream v4" ‖ stream id)[..16]`, with
//! the nonce `0000 ‖ counter`, so no nonce repeats under a key however many senders share the
//! secret. A receiver derives what each stream needs once and keeps it in a small fixed cache;
//! only streams that passed a datagram enter the cache, so forged ids never take a slot there.
//! Tokens derived for ids not yet proven wait in a second small table of their own: a flood that
//! repeats its stream ids costs one derivation per id, then a compare per datagram; only fresh
//! ids cost a derivation each (a BLAKE3 of 30 bytes). Every check that needs no key (lengths,
//! magic, version, header fields, fragment count, key id) runs before any of it. The token is compared (in constant time) before the page is touched: a forged
//! datagram costs a 16-byte comparison, not a pass over 8 KiB.
//!
//! # Why a token and not a MAC by default
//!
//! The datagram path is exactly as secure as the TCP connection that registered it, and that
//! connection is plain TCP: PrefetchTarget carries the secret in the clear, and GetPage answers
//! carry pages in the clear. Whoever can read that connection can read or forge datagrams under
//! any construction; what a MAC adds over the token is only against someone who sees the UDP
//! datagrams but not the TCP connection, which shares its path. Against an off-path forger, an
//! unguessable 128-bit token does what a MAC does (a forgery must guess 128 bits), and the
//! checksum catches corruption. The MAC costs: AES-128-GCM took 2.7 µs to seal and 3.3 µs to
//! open a page on an AMD EPYC without AWS-LC's VAES path, where the token's checksum takes a
//! few hundred nanoseconds on any CPU with AVX2. The aead protection stays for connections that
//! are themselves encrypted (TLS), where encrypting datagrams becomes meaningful. Formats 1 to
//! 6 are rejected by version (6 is this layout with a CRC-64/NVME checksum, 5 exactly this
//! one, 4 the same with bytes 6..8 reserved: no fragments). The key derivation's labels
//! ("udpf token v4", "udpf stream v4") are unchanged since format 4.
//!
//! Owns: the format (its constants, `DatagramHeader`'s encoding, `DropReason`), the key derivation
//! and both protections, each sender stream's counter (`SealStream`) and the receiver's stream
//! caches (`Opener`). Works on byte buffers only: no socket, no clock (the send time is passed in),
//! no cache (of `lfc` only the tag types, `PAGE_SIZE` and `getrandom`); part of the shared layer,
//! it imports none of the daemon's modules.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use lfc::{BufferTag, RelTag, MAX_FORKNUM, PAGE_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};

pub const MAGIC: [u8; 4] = *b"UDPF";
pub const VERSION: u8 = 7;
pub const HEADER_LEN: usize = 96;
pub const TAG_LEN: usize = 16;
/// Every valid datagram is exactly this long.
pub const DATAGRAM_LEN: usize = HEADER_LEN + PAGE_SIZE + TAG_LEN;
/// Most fragments one page is split into (1 KiB... 256-byte pieces: an IPv4 path of MTU 576,
/// the smallest every host must take, needs 32).
pub const MAX_FRAGMENTS: usize = 32;
/// What every datagram carries besides its piece of the page.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Room for one page sealed at any fragment count: `count` datagrams back to back.
/// Largest at 2 fragments: two halves and their parity, 3 × (112 + 4096) bytes.
pub const SEALED_PAGE_MAX: usize = 3 * (OVERHEAD + PAGE_SIZE / 2);
/// One sealed page: [`SealStream::seal_page`] writes its datagrams at the front.
pub type SealedPage = [u8; SEALED_PAGE_MAX];
/// IPv4 and UDP headers: what a path's MTU holds besides the datagram.
const IPV4_UDP_HEADERS: usize = 20 + 8;
/// IPv6 and UDP headers.
const IPV6_UDP_HEADERS: usize = 40 + 8;
pub const KEY_LEN: usize = 32;
pub const STREAM_ID_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;
pub const TOKEN_LEN: usize = 16;
/// Stream keys one receiver keeps derived (direct-mapped by stream id). A compute sees one
/// stream per backend connection and page server; a stream that lost its entry is derived
/// again (about 0.2 µs), nothing worse.
pub const STREAM_CACHE_ENTRIES: usize = 256;
/// Tokens one receiver keeps for stream ids not yet proven by a datagram (`Opener`).
const UNPROVEN_CACHE_ENTRIES: usize = 64;

const FLAGS_AT: usize = 5;
const FRAGMENT_INDEX_AT: usize = 6;
const FRAGMENT_COUNT_AT: usize = 7;
const STREAM_ID_AT: usize = 64;
const COUNTER_AT: usize = 80;
const CHECKSUM_AT: usize = 88;
/// Domain separation of the derivations from each other and from any other use of the secret.
const STREAM_KEY_LABEL: &[u8; 14] = b"udpf stream v4";
const TOKEN_LABEL: &[u8; 13] = b"udpf token v4";

/// How a datagram is protected (the flags byte); see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protection {
    /// The page in the clear, the stream's token and a checksum: the default.
    #[default]
    Token,
    /// The page AES-128-GCM encrypted and authenticated with the header.
    Aead,
}

impl Protection {
    fn flags(self) -> u8 {
        match self {
            Protection::Token => 0,
            Protection::Aead => 1,
        }
    }

    fn from_flags(flags: u8) -> Option<Protection> {
        match flags {
            0 => Some(Protection::Token),
            1 => Some(Protection::Aead),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Token => "token",
            Protection::Aead => "aead",
        }
    }
}

impl std::str::FromStr for Protection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "token" => Ok(Protection::Token),
            "aead" => Ok(Protection::Aead),
            other => Err(format!(
                "unknown datagram protection {other:?}: token or aead"
            )),
        }
    }
}

/// Why a datagram was not installed. Every received datagram ends as installed or as exactly
/// one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    TooShort,
    TooLong,
    BadMagic,
    BadVersion,
    /// Reserved fields are non-zero or the fork number is out of range.
    BadHeader,
    UnknownKeyId,
    /// The trailer is not the stream's token, or the GCM tag does not authenticate header and
    /// page under the stream's key: forged (or, for aead, corrupt).
    BadMac,
    /// The token is right but the checksum does not match header and page: corrupted in
    /// transit.
    BadChecksum,
    /// The page was modified after the prefetch was requested (lwlsn > not_modified_since).
    Stale,
    AlreadyPresent,
    NoRoom,
    /// A piece already received for a page still being joined (a duplicate on the wire), or a
    /// late piece of a page already joined (usually its parity piece, when every fragment
    /// came).
    DuplicateFragment,
    /// A page given up with fragments missing: not complete within the receiver's assembly
    /// timeout, or pushed out of the full assembly table by a newer page. Counts pages, not
    /// datagrams (its fragments were each counted as held when they came).
    Incomplete,
}

impl DropReason {
    pub const ALL: [DropReason; 13] = [
        DropReason::TooShort,
        DropReason::TooLong,
        DropReason::BadMagic,
        DropReason::BadVersion,
        DropReason::BadHeader,
        DropReason::UnknownKeyId,
        DropReason::BadMac,
        DropReason::BadChecksum,
        DropReason::Stale,
        DropReason::AlreadyPresent,
        DropReason::NoRoom,
        DropReason::DuplicateFragment,
        DropReason::Incomplete,
    ];

    /// Label value for metrics (`reason="bad_mac"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::TooLong => "too_long",
            DropReason::BadMagic => "bad_magic",
            DropReason::BadVersion => "bad_version",
            DropReason::BadHeader => "bad_header",
            DropReason::UnknownKeyId => "unknown_key_id",
            DropReason::BadMac => "bad_mac",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::Stale => "stale",
            DropReason::AlreadyPresent => "already_present",
            DropReason::NoRoom => "no_room",
            DropReason::DuplicateFragment => "duplicate_fragment",
            DropReason::Incomplete => "incomplete",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decoded header fields of a datagram (protection, stream id, counter and checksum belong
/// to the sealing and are not part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatagramHeader {
    pub key_id: u32,
    pub reqid: u64,
    pub request_lsn: u64,
    pub not_modified_since: u64,
    pub tag: BufferTag,
    pub sent_at_ns: u64,
}

impl DatagramHeader {
    /// The header bytes with flags, stream id, counter and checksum zero (sealing fills them
    /// in).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[FRAGMENT_COUNT_AT] = 1;
        h[8..12].copy_from_slice(&self.key_id.to_be_bytes());
        h[12..20].copy_from_slice(&self.reqid.to_be_bytes());
        h[20..28].copy_from_slice(&self.request_lsn.to_be_bytes());
        h[28..36].copy_from_slice(&self.not_modified_since.to_be_bytes());
        let r = self.tag.rel;
        h[36..40].copy_from_slice(&r.spcnode.to_be_bytes());
        h[40..44].copy_from_slice(&r.dbnode.to_be_bytes());
        h[44..48].copy_from_slice(&r.relnode.to_be_bytes());
        h[48] = r.forknum;
        h[52..56].copy_from_slice(&self.tag.blkno.to_be_bytes());
        h[56..64].copy_from_slice(&self.sent_at_ns.to_be_bytes());
        h
    }

    /// Parses and checks everything that can be checked without the key.
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<DatagramHeader, DropReason> {
        let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if h[0..4] != MAGIC {
            return Err(DropReason::BadMagic);
        }
        if h[4] != VERSION {
            return Err(DropReason::BadVersion);
        }
        if Protection::from_flags(h[FLAGS_AT]).is_none()
            || fragment_of(h).is_none()
            || h[49..52] != [0, 0, 0]
            || h[48] > MAX_FORKNUM
        {
            return Err(DropReason::BadHeader);
        }
        Ok(DatagramHeader {
            key_id: u32_at(8),
            reqid: u64_at(12),
            request_lsn: u64_at(20),
            not_modified_since: u64_at(28),
            tag: RelTag::new(u32_at(36), u32_at(40), u32_at(44), h[48]).block(u32_at(52)),
            sent_at_ns: u64_at(56),
        })
    }
}

/// A header's fragment index and count, if they are well formed: the count a power of two
/// up to [`MAX_FRAGMENTS`], the index below it, or equal to it for a split page's parity piece.
fn fragment_of(h: &[u8; HEADER_LEN]) -> Option<(u8, u8)> {
    let (index, count) = (h[FRAGMENT_INDEX_AT], h[FRAGMENT_COUNT_AT]);
    let index_ok = index < count || (count > 1 && index == count);
    (count.is_power_of_two() && usize::from(count) <= MAX_FRAGMENTS && index_ok)
        .then_some((index, count))
}

/// Datagrams a page split into `count` fragments takes: the fragments and, when split, their
/// parity piece.
pub const fn datagrams_per_page(count: u8) -> u8 {
    if count > 1 {
        count + 1
    } else {
        1
    }
}

/// How many fragments a page needs on a path of `mtu` bytes (IPv6 when `ipv6`): the fewest
/// (a power of two) whose datagrams, with their IP and UDP headers, fit in the MTU. 0 (not
/// known) keeps whole pages; `None` for an MTU too small even for [`MAX_FRAGMENTS`].
pub fn fragments_for_mtu(mtu: u32, ipv6: bool) -> Option<u8> {
    if mtu == 0 {
        return Some(1);
    }
    let ip = if ipv6 {
        IPV6_UDP_HEADERS
    } else {
        IPV4_UDP_HEADERS
    };
    let room = (mtu as usize).checked_sub(ip + OVERHEAD)?;
    let mut count = 1;
    while PAGE_SIZE / count > room {
        count *= 2;
        if count > MAX_FRAGMENTS {
            return None;
        }
    }
    Some(count as u8)
}

/// The smallest path MTU [`fragments_for_mtu`] accepts.
pub const fn min_path_mtu(ipv6: bool) -> u32 {
    let ip = if ipv6 {
        IPV6_UDP_HEADERS
    } else {
        IPV4_UDP_HEADERS
    };
    (ip + OVERHEAD + PAGE_SIZE / MAX_FRAGMENTS) as u32
}

/// `dst ^= src`, byte by byte (the compiler vectorises it).
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// The length of every datagram of a page split into `count` fragments.
pub const fn fragment_datagram_len(count: u8) -> usize {
    OVERHEAD + PAGE_SIZE / count as usize
}

fn stream_id_of(h: &[u8; HEADER_LEN]) -> [u8; STREAM_ID_LEN] {
    h[STREAM_ID_AT..STREAM_ID_AT + STREAM_ID_LEN]
        .try_into()
        .expect("16 bytes")
}

fn counter_of(h: &[u8; HEADER_LEN]) -> u64 {
    u64::from_be_bytes(h[COUNTER_AT..CHECKSUM_AT].try_into().expect("8 bytes"))
}

/// The AES-GCM nonce of a stream's datagram number `counter`.
fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The token protection's checksum: XXH3-64 of the page (or fragment), seeded with XXH3-64 of
/// the header up to the checksum field (one pass over memory already in place, no copy; a
/// changed header changes the seed, so the page's hash is another function altogether). It
/// misses random corruption with odds of 2^-64 and needs only SIMD every x86-64 and ARM CPU
/// has: 8 KiB took 0.32 µs in cache on an AMD EPYC Zen 3 (AVX2) where format 6's CRC-64/NVME
/// took 0.79 µs (without AVX-512 `crc-fast` folds 128 bits at a time: the daemon spent 23 % of
/// its CPU per page in it), and 0.23 µs against the CRC's 0.15 on an Intel Xeon with AVX-512.
/// The worst CPU decides: seal plus open 1.82 µs a page on Zen 3 with the CRC, over the 1.5 µs
/// the path may spend.
fn checksum(header: &[u8; HEADER_LEN], page: &[u8]) -> u64 {
    use twox_hash::XxHash3_64;
    let seed = XxHash3_64::oneshot(&header[..CHECKSUM_AT]);
    XxHash3_64::oneshot_with_seed(seed, page)
}

/// Which code path the token protection's checksum takes on this CPU (`avx2`, `sse2`, `neon`
/// or `scalar`, in the order `twox-hash` picks them at run time): its speed depends on it, so
/// benchmark records name it.
pub fn checksum_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return "xxh3-avx2";
        }
        if std::arch::is_x86_feature_detected!("sse2") {
            return "xxh3-sse2";
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            return "xxh3-neon";
        }
    }
    "xxh3-scalar"
}

fn checksum_of(h: &[u8; HEADER_LEN]) -> u64 {
    u64::from_be_bytes(h[CHECKSUM_AT..HEADER_LEN].try_into().expect("8 bytes"))
}

/// The receiver's cache entry at `slot` if it belongs to `id`.
#[inline]
fn cached_stream<'a>(
    streams: &'a mut [Option<CachedStream>],
    slot: usize,
    id: &[u8; STREAM_ID_LEN],
) -> Option<&'a mut CachedStream> {
    match &mut streams[slot] {
        Some(c) if c.id == *id => Some(c),
        _ => None,
    }
}

/// Decrypts `page` (a page or a fragment) in place if `tag` authenticates header and page under
/// `aead`.
fn open_in_place(
    aead: &LessSafeKey,
    header: &[u8; HEADER_LEN],
    page: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    aead.open_in_place_separate_tag(
        nonce(counter_of(header)),
        Aad::from(&header[..]),
        &tag[..],
        page,
    )
    .is_ok()
}

/// A compute's datagram secret: the id names it on the wire so a rotated key is told apart
/// from a forgery.
#[derive(Clone)]
pub struct DatagramKey {
    pub id: u32,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for DatagramKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DatagramKey {
    pub fn new(id: u32, key: [u8; KEY_LEN]) -> Self {
        DatagramKey { id, key }
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// `BLAKE3-keyed(secret, label ‖ stream id)[..16]` (see the module docs).
    fn derive(&self, label: &[u8], stream_id: &[u8; STREAM_ID_LEN]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(label);
        h.update(stream_id);
        h.finalize().as_bytes()[..16]
            .try_into()
            .expect("16 of 32 bytes")
    }

    /// The token of stream `stream_id`.
    fn stream_token(&self, stream_id: &[u8; STREAM_ID_LEN]) -> [u8; TOKEN_LEN] {
        self.derive(TOKEN_LABEL, stream_id)
    }

    /// The AES-128-GCM key of stream `stream_id`.
    fn stream_key(&self, stream_id: &[u8; STREAM_ID_LEN]) -> LessSafeKey {
        let unbound = UnboundKey::new(&AES_128_GCM, &self.derive(STREAM_KEY_LABEL, stream_id))
            .expect("AES_128_GCM takes 16-byte keys");
        LessSafeKey::new(unbound)
    }

    /// A sealing stream under this key. `stream_id` must be fresh and random (a stream's nonces
    /// are its counter, so two streams with one id would repeat nonces): the page server and
    /// the benches draw one with [`random_stream_id`] for every stream; the simulator and tests
    /// take theirs from a seed, under keys that exist for one run only.
    pub fn stream(&self, stream_id: [u8; STREAM_ID_LEN]) -> SealStream {
        self.stream_with(stream_id, Protection::default())
    }

    /// Like `stream`, with the given protection.
    pub fn stream_with(
        &self,
        stream_id: [u8; STREAM_ID_LEN],
        protection: Protection,
    ) -> SealStream {
        let seal = match protection {
            Protection::Token => Seal::Token(self.stream_token(&stream_id)),
            Protection::Aead => Seal::Aead(self.stream_key(&stream_id)),
        };
        SealStream {
            key_id: self.id,
            stream_id,
            seal,
            fragments: 1,
            next_counter: AtomicU64::new(0),
        }
    }

    /// A receiver's state for datagrams under this key (one per worker thread).
    pub fn opener(&self) -> Opener {
        Opener {
            key: self.clone(),
            streams: (0..STREAM_CACHE_ENTRIES).map(|_| None).collect(),
            unproven: vec![None; UNPROVEN_CACHE_ENTRIES].into_boxed_slice(),
        }
    }
}

/// A fresh stream id from the operating system's random source (`getrandom`).
pub fn random_stream_id() -> Result<[u8; STREAM_ID_LEN], SealError> {
    // Not aws-lc's `SystemRandom`: its generator seeds itself from CPU jitter on its first use
    // in a process, about 50 ms, which the first PrefetchTarget a page server answered paid (a
    // backend awaits that answer before its first read: `bench net`'s first udp scan, 8192
    // pages at MTU 9000, lost a third of its speed to it).
    let mut id = [0u8; STREAM_ID_LEN];
    lfc::getrandom(&mut id).map_err(|_| SealError::NoRandomness)?;
    Ok(id)
}

/// Why a datagram could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Every counter value of the stream was used (2^64 datagrams): open a new stream.
    #[error("the datagram stream has used all of its counter values")]
    StreamExhausted,
    /// The operating system's random source failed (no stream id can be drawn).
    #[error("the system random source failed")]
    NoRandomness,
}

/// What a stream seals with.
enum Seal {
    Token([u8; TOKEN_LEN]),
    Aead(LessSafeKey),
}

/// One sender's stream: its token or key and its datagram counter. Shared by every sender
/// thread that sends for the same registration (the counter is atomic).
pub struct SealStream {
    key_id: u32,
    stream_id: [u8; STREAM_ID_LEN],
    seal: Seal,
    /// Datagrams per page ([`seal_page`](SealStream::seal_page)): 1, or a power of two up to
    /// [`MAX_FRAGMENTS`].
    fragments: u8,
    next_counter: AtomicU64,
}

impl std::fmt::Debug for SealStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealStream")
            .field("key_id", &self.key_id)
            .field("protection", &self.protection())
            .field("fragments", &self.fragments)
            .field("sealed", &self.next_counter.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SealStream {
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn stream_id(&self) -> [u8; STREAM_ID_LEN] {
        self.stream_id
    }

    pub fn protection(&self) -> Protection {
        match self.seal {
            Seal::Token(_) => Protection::Token,
            Seal::Aead(_) => Protection::Aead,
        }
    }

    /// The stream with its pages split into `count` fragments (see the module docs): a power of
    /// two up to [`MAX_FRAGMENTS`], as [`fragments_for_mtu`] gives.
    ///
    /// # Panics
    /// If `count` is not such a power of two (a bug of the caller, which takes it from
    /// `fragments_for_mtu`).
    pub fn with_fragments(mut self, count: u8) -> Self {
        assert!(
            count.is_power_of_two() && usize::from(count) <= MAX_FRAGMENTS,
            "a page splits into 1, 2, 4 ... {MAX_FRAGMENTS} fragments, not {count}"
        );
        self.fragments = count;
        self
    }

    /// Fragments per page (1: whole pages).
    pub fn fragments(&self) -> u8 {
        self.fragments
    }

    /// Datagrams per page: the fragments and, when split, the parity piece.
    pub fn datagrams_per_page(&self) -> u8 {
        datagrams_per_page(self.fragments)
    }

    /// Bytes of each datagram of a page.
    pub fn fragment_len(&self) -> usize {
        fragment_datagram_len(self.fragments)
    }

    /// Bytes of a sealed page: `datagrams_per_page()` datagrams of `fragment_len()` bytes.
    pub fn sealed_len(&self) -> usize {
        usize::from(self.datagrams_per_page()) * self.fragment_len()
    }

    /// Takes `n` consecutive counter values, or none when the stream has fewer left.
    fn take_counters(&self, n: u8) -> Result<u64, SealError> {
        self.next_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_add(u64::from(n))
            })
            .map_err(|_| SealError::StreamExhausted)
    }

    /// Encodes a complete whole-page datagram into `out`: header, page (encrypted under aead),
    /// trailer, whatever the stream's fragment count.
    pub fn seal(
        &self,
        header: &DatagramHeader,
        page: &[u8; PAGE_SIZE],
        out: &mut [u8; DATAGRAM_LEN],
    ) -> Result<(), SealError> {
        debug_assert_eq!(header.key_id, self.key_id, "header names another key");
        let counter = self.take_counters(1)?;
        self.seal_piece(&header.encode(), counter, 0, 1, page, out);
        Ok(())
    }

    /// Encodes a page as the stream's `datagrams_per_page()` datagrams, back to back at the
    /// front of `out` (`sealed_len()` bytes, each datagram `fragment_len()`): the fragments in
    /// order, then (split pages) the parity piece, the XOR of the fragments' plain pieces, which
    /// lets the receiver rebuild any one lost fragment. Returns the bytes written. With one
    /// fragment this is [`seal`](Self::seal)'s datagram.
    pub fn seal_page(
        &self,
        header: &DatagramHeader,
        page: &[u8; PAGE_SIZE],
        out: &mut SealedPage,
    ) -> Result<usize, SealError> {
        debug_assert_eq!(header.key_id, self.key_id, "header names another key");
        let count = self.fragments;
        let base = self.take_counters(self.datagrams_per_page())?;
        let encoded = header.encode();
        let (piece, len) = (PAGE_SIZE / usize::from(count), self.fragment_len());
        for (i, (src, dst)) in page
            .chunks_exact(piece)
            .zip(out.chunks_exact_mut(len))
            .enumerate()
        {
            self.seal_piece(&encoded, base + i as u64, i as u8, count, src, dst);
        }
        if count > 1 {
            let mut parity = [0u8; PAGE_SIZE / 2];
            let parity = &mut parity[..piece];
            for src in page.chunks_exact(piece) {
                xor_into(parity, src);
            }
            let at = usize::from(count) * len;
            let dst = &mut out[at..at + len];
            self.seal_piece(&encoded, base + u64::from(count), count, count, parity, dst);
        }
        Ok(self.sealed_len())
    }

    /// One datagram: `encoded` with its sealing fields, `piece` (fragment `index` of `count`),
    /// the trailer; `out` is exactly its length.
    fn seal_piece(
        &self,
        encoded: &[u8; HEADER_LEN],
        counter: u64,
        index: u8,
        count: u8,
        piece: &[u8],
        out: &mut [u8],
    ) {
        debug_assert_eq!(out.len(), OVERHEAD + piece.len());
        let (h, rest) = out.split_at_mut(HEADER_LEN);
        let h: &mut [u8; HEADER_LEN] = h.try_into().expect("split at HEADER_LEN");
        let (body, trailer) = rest.split_at_mut(piece.len());
        *h = *encoded;
        h[FLAGS_AT] = self.protection().flags();
        h[FRAGMENT_INDEX_AT] = index;
        h[FRAGMENT_COUNT_AT] = count;
        h[STREAM_ID_AT..STREAM_ID_AT + STREAM_ID_LEN].copy_from_slice(&self.stream_id);
        h[COUNTER_AT..CHECKSUM_AT].copy_from_slice(&counter.to_be_bytes());
        match &self.seal {
            Seal::Token(token) => {
                body.copy_from_slice(piece);
                let sum = checksum(h, piece);
                h[CHECKSUM_AT..].copy_from_slice(&sum.to_be_bytes());
                trailer.copy_from_slice(token);
            }
            // Encrypts straight from the page into the datagram (no copy in between).
            Seal::Aead(aead) => aead
                .seal_out_of_place_scatter(
                    nonce(counter),
                    Aad::from(&h[..]),
                    piece,
                    body,
                    &[],
                    trailer,
                )
                .expect("fixed, matching lengths far below AES-GCM's limits"),
        }
    }
}

/// What a receiver derived for one stream id: its token, and its AES key once an aead datagram
/// of the stream passed.
struct CachedStream {
    id: [u8; STREAM_ID_LEN],
    token: [u8; TOKEN_LEN],
    aead: Option<LessSafeKey>,
}

/// A stream id and its derived token, before any datagram of the stream passed.
type UnprovenToken = ([u8; STREAM_ID_LEN], [u8; TOKEN_LEN]);

/// A receiver's view of one key: validates datagrams (and decrypts aead pages in place).
/// Allocated once (its stream-key cache has a fixed size); opening never allocates.
pub struct Opener {
    key: DatagramKey,
    streams: Box<[Option<CachedStream>]>,
    /// Tokens derived for stream ids no datagram has passed under yet (a stream's first
    /// datagrams, or a forger's ids), direct-mapped apart from `streams`: a flood that repeats
    /// its ids costs a compare per datagram, not a derivation, and can never displace a proven
    /// stream.
    unproven: Box<[Option<UnprovenToken>]>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("key_id", &self.key.id)
            .finish_non_exhaustive()
    }
}

impl Opener {
    pub fn key_id(&self) -> u32 {
        self.key.id
    }

    /// The key this opener opens under.
    pub fn key(&self) -> &DatagramKey {
        &self.key
    }

    /// Validates a datagram that was scattered into header, page and trailer regions and, for
    /// aead, decrypts its piece of the page in place once it authenticates. `received_len` is
    /// what the kernel reported; `truncated` is MSG_TRUNC (the datagram was longer than the three
    /// regions). A whole page fills the page region and the trailer region; a fragment, shorter,
    /// puts its piece at the front of the page region and its trailer right after it.
    ///
    /// Every check that needs no key runs first (lengths, header fields, key id), then the
    /// token compare (or the GCM tag), then the checksum. Only `Ok` may reach the cache: on any
    /// error `page` holds unspecified bytes.
    pub fn open(
        &mut self,
        received_len: usize,
        truncated: bool,
        header: &[u8; HEADER_LEN],
        page: &mut [u8; PAGE_SIZE],
        tag: &[u8; TAG_LEN],
    ) -> Result<Opened, DropReason> {
        let checked = self.check(received_len, truncated, header)?;
        let (body, tag) = if checked.count == 1 {
            (&mut page[..], *tag)
        } else {
            let (body, rest) = page.split_at_mut(PAGE_SIZE / usize::from(checked.count));
            let tag: [u8; TAG_LEN] = rest[..TAG_LEN].try_into().expect("TAG_LEN bytes");
            (body, tag)
        };
        self.open_checked(checked, header, body, &tag)
    }

    /// [`open`](Self::open) for a datagram that lies whole in `bytes` (exactly its length),
    /// opened where it lies: its piece (aead: decrypted in place) is then
    /// `bytes[HEADER_LEN..][..piece size]`. A segment of a coalesced train that the kernel
    /// wrote inside one frame is opened so, without being gathered out first.
    pub fn open_in_place(&mut self, bytes: &mut [u8]) -> Result<Opened, DropReason> {
        let header: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DropReason::TooShort)?;
        let checked = self.check(bytes.len(), false, &header)?;
        // `check` holds the length to the piece count's: header, piece, tag.
        let piece_len = bytes.len() - OVERHEAD;
        let (body, tag) = bytes[HEADER_LEN..].split_at_mut(piece_len);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().expect("TAG_LEN bytes");
        self.open_checked(checked, &header, body, &tag)
    }

    /// The checks of `open` that need no key: lengths against the header's piece count, the
    /// header's fields, the key id.
    fn check(
        &self,
        received_len: usize,
        truncated: bool,
        header: &[u8; HEADER_LEN],
    ) -> Result<Checked, DropReason> {
        if truncated || received_len > DATAGRAM_LEN {
            return Err(DropReason::TooLong);
        }
        if received_len < OVERHEAD {
            return Err(DropReason::TooShort);
        }
        let hdr = DatagramHeader::decode(header)?;
        let (index, count) = fragment_of(header).ok_or(DropReason::BadHeader)?;
        let expected = fragment_datagram_len(count);
        if received_len > expected {
            return Err(DropReason::TooLong);
        }
        if received_len < expected {
            return Err(DropReason::TooShort);
        }
        if hdr.key_id != self.key.id {
            return Err(DropReason::UnknownKeyId);
        }
        let protection = Protection::from_flags(header[FLAGS_AT]).ok_or(DropReason::BadHeader)?;
        if protection == Protection::Aead && checksum_of(header) != 0 {
            return Err(DropReason::BadHeader);
        }
        Ok(Checked {
            hdr,
            index,
            count,
            protection,
        })
    }

    /// The rest of `open` once `check` passed: the token and checksum (or the GCM tag) of
    /// `body`, the datagram's piece.
    // Always inlined: `open` and `open_in_place` each compile as one function.
    #[inline(always)]
    fn open_checked(
        &mut self,
        checked: Checked,
        header: &[u8; HEADER_LEN],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<Opened, DropReason> {
        let Checked {
            hdr,
            index,
            count,
            protection,
        } = checked;
        let stream_id = stream_id_of(header);
        // Random ids: any two bytes index the cache uniformly.
        let slot =
            usize::from(u16::from_le_bytes([stream_id[0], stream_id[1]])) % STREAM_CACHE_ENTRIES;
        match protection {
            Protection::Token => self.open_token(slot, stream_id, header, body, tag)?,
            Protection::Aead => self.open_aead(slot, stream_id, header, body, tag)?,
        }
        Ok(Opened {
            hdr,
            piece: Piece {
                index,
                count,
                stream_id,
                page_id: counter_of(header).wrapping_sub(u64::from(index)),
            },
        })
    }

    /// `open` for a token datagram: the stream's token in the trailer, then the checksum.
    // Always inlined: one call site on the receive path, so `open` compiles as one function.
    #[inline(always)]
    fn open_token(
        &mut self,
        slot: usize,
        stream_id: [u8; STREAM_ID_LEN],
        header: &[u8; HEADER_LEN],
        body: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), DropReason> {
        let cached = cached_stream(&mut self.streams, slot, &stream_id);
        let token = match &cached {
            Some(c) => c.token,
            None => {
                // Other id bytes than the proven cache's index, so the two tables collide apart.
                let u = usize::from(stream_id[2]) % UNPROVEN_CACHE_ENTRIES;
                match self.unproven[u] {
                    Some((id, token)) if id == stream_id => token,
                    _ => {
                        let token = self.key.stream_token(&stream_id);
                        self.unproven[u] = Some((stream_id, token));
                        token
                    }
                }
            }
        };
        if aws_lc_rs::constant_time::verify_slices_are_equal(&token, tag).is_err() {
            return Err(DropReason::BadMac);
        }
        if checksum(header, body) != checksum_of(header) {
            return Err(DropReason::BadChecksum);
        }
        if cached.is_none() {
            // Only a stream that passed a datagram takes a cache entry.
            self.streams[slot] = Some(CachedStream {
                id: stream_id,
                token,
                aead: None,
            });
        }
        Ok(())
    }

    /// `open` for an aead datagram: authenticates and decrypts the body in place under the
    /// stream's key (derived and cached on the stream's first datagram that passes).
    // Always inlined: one call site on the receive path, so `open` compiles as one function.
    #[inline(always)]
    fn open_aead(
        &mut self,
        slot: usize,
        stream_id: [u8; STREAM_ID_LEN],
        header: &[u8; HEADER_LEN],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), DropReason> {
        match cached_stream(&mut self.streams, slot, &stream_id) {
            Some(CachedStream {
                aead: Some(aead), ..
            }) => {
                if !open_in_place(aead, header, body, tag) {
                    return Err(DropReason::BadMac);
                }
            }
            cached => {
                let aead = self.key.stream_key(&stream_id);
                if !open_in_place(&aead, header, body, tag) {
                    return Err(DropReason::BadMac);
                }
                match cached {
                    Some(c) => c.aead = Some(aead),
                    None => {
                        self.streams[slot] = Some(CachedStream {
                            id: stream_id,
                            token: self.key.stream_token(&stream_id),
                            aead: Some(aead),
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Validates any datagram (a whole page or a fragment) held in one contiguous buffer, as
    /// the kernel would scatter it into a slot: its piece of the page (aead: decrypted) lands at
    /// the front of `page` (the simulator's copy path, tests, fuzzing).
    pub fn open_any_bytes(
        &mut self,
        bytes: &[u8],
        page: &mut [u8; PAGE_SIZE],
    ) -> Result<Opened, DropReason> {
        let mut header = [0u8; HEADER_LEN];
        let mut tag = [0u8; TAG_LEN];
        let h = bytes.len().min(HEADER_LEN);
        header[..h].copy_from_slice(&bytes[..h]);
        let rest = &bytes[h..];
        let p = rest.len().min(PAGE_SIZE);
        page[..p].copy_from_slice(&rest[..p]);
        let t = (rest.len() - p).min(TAG_LEN);
        tag[..t].copy_from_slice(&rest[p..p + t]);
        self.open(bytes.len(), false, &header, page, &tag)
    }

    /// Validates a whole-page datagram held in one contiguous buffer and copies (aead:
    /// decrypts) its page into `page` (the simulator, tests and copy paths). A fragment is
    /// turned away (too short).
    pub fn open_bytes(
        &mut self,
        bytes: &[u8],
        page: &mut [u8; PAGE_SIZE],
    ) -> Result<DatagramHeader, DropReason> {
        if bytes.len() > DATAGRAM_LEN {
            return Err(DropReason::TooLong);
        }
        if bytes.len() < DATAGRAM_LEN {
            return Err(DropReason::TooShort);
        }
        self.open_any_bytes(bytes, page).map(|o| o.hdr)
    }
}

/// What `Opener::check` found in a header that passed it.
struct Checked {
    hdr: DatagramHeader,
    index: u8,
    count: u8,
    protection: Protection,
}

/// Which part of its page an opened datagram carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Fragment index, below `count`.
    pub index: u8,
    /// Fragments of the page: 1 for a whole page.
    pub count: u8,
    /// The stream it was sealed in.
    pub stream_id: [u8; STREAM_ID_LEN],
    /// The page's first counter value (`counter - index`): with the stream id, what names the
    /// page among every page in flight.
    pub page_id: u64,
}

impl Piece {
    /// Whether this is a split page's parity piece (the XOR of its fragments), not a fragment.
    pub fn is_parity(&self) -> bool {
        self.index == self.count
    }

    /// Bytes of the page this piece carries.
    pub fn size(&self) -> usize {
        PAGE_SIZE / usize::from(self.count)
    }

    /// Where in the page they go (a fragment; the parity piece goes nowhere).
    pub fn offset(&self) -> usize {
        usize::from(self.index) * self.size()
    }
}

/// A datagram that authenticated: its header and which piece of the page it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub hdr: DatagramHeader,
    pub piece: Piece,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: [u8; STREAM_ID_LEN] = [0x11; STREAM_ID_LEN];

    fn key() -> DatagramKey {
        DatagramKey::new(7, [0x42; KEY_LEN])
    }

    fn header() -> DatagramHeader {
        DatagramHeader {
            key_id: 7,
            reqid: 0x0102030405060708,
            request_lsn: u64::MAX,
            not_modified_since: 0x1122,
            tag: RelTag::new(1663, 5, 16384, 1).block(0xA0B0C0D0),
            sent_at_ns: 99,
        }
    }

    fn page() -> [u8; PAGE_SIZE] {
        let mut p = [0u8; PAGE_SIZE];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        p
    }

    fn sealed_by(stream: &SealStream) -> Box<[u8; DATAGRAM_LEN]> {
        let mut out = Box::new([0u8; DATAGRAM_LEN]);
        stream.seal(&header(), &page(), &mut out).unwrap();
        out
    }

    fn sealed() -> Box<[u8; DATAGRAM_LEN]> {
        sealed_by(&key().stream(STREAM))
    }

    fn open(key: &DatagramKey, d: &[u8]) -> Result<DatagramHeader, DropReason> {
        key.opener().open_bytes(d, &mut [0u8; PAGE_SIZE])
    }

    fn derived(label: &[u8]) -> [u8; 16] {
        let mut input = label.to_vec();
        input.extend_from_slice(&STREAM);
        blake3::keyed_hash(&[0x42; KEY_LEN], &input).as_bytes()[..16]
            .try_into()
            .unwrap()
    }

    fn expected_header(flags: u8, counter: u64) -> [u8; HEADER_LEN] {
        let mut h = header().encode();
        h[5] = flags;
        h[64..80].copy_from_slice(&STREAM);
        h[80..88].copy_from_slice(&counter.to_be_bytes());
        h
    }

    #[test]
    fn token_datagrams_carry_the_page_in_clear_the_derived_token_and_an_xxh3_checksum() {
        // Golden definition, computed independently of `SealStream`: token =
        // BLAKE3-keyed(secret, "udpf token v4" ‖ stream id)[..16]; checksum = XXH3-64 of the
        // page seeded with XXH3-64 of header bytes 0..88.
        let d = sealed();
        let mut h = expected_header(0, 0);
        let seed = twox_hash::XxHash3_64::oneshot(&h[..88]);
        let sum = twox_hash::XxHash3_64::oneshot_with_seed(seed, &page()[..]);
        h[88..96].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(&d[..HEADER_LEN], &h[..], "first datagram: counter 0");
        assert_eq!(&d[HEADER_LEN..HEADER_LEN + PAGE_SIZE], &page()[..]);
        assert_eq!(&d[HEADER_LEN + PAGE_SIZE..], &derived(b"udpf token v4")[..]);
    }

    #[test]
    fn aead_datagrams_are_aes_gcm_under_the_derived_stream_key() {
        // stream key = BLAKE3-keyed(secret, "udpf stream v4" ‖ stream id)[..16]; nonce = 0000 ‖
        // counter; header (checksum field zero) = associated data.
        let d = sealed_by(&key().stream_with(STREAM, Protection::Aead));
        let aead =
            LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &derived(b"udpf stream v4")).unwrap());
        let h = expected_header(1, 0);
        assert_eq!(&d[..HEADER_LEN], &h[..]);
        let mut body = page();
        let tag = aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&h[..]),
                &mut body,
            )
            .unwrap();
        assert_eq!(&d[HEADER_LEN..HEADER_LEN + PAGE_SIZE], &body[..]);
        assert_eq!(&d[HEADER_LEN + PAGE_SIZE..], tag.as_ref());
        assert_ne!(&body[..], &page()[..], "the page travels encrypted");
        let mut out = [0u8; PAGE_SIZE];
        assert_eq!(key().opener().open_bytes(&d[..], &mut out), Ok(header()));
        assert_eq!(&out[..], &page()[..]);
    }

    #[test]
    fn golden_header_layout() {
        let stream = key().stream(STREAM);
        let _first = sealed_by(&stream);
        let d = sealed_by(&stream);
        let h = &d[..HEADER_LEN];
        assert_eq!(&h[0..4], b"UDPF");
        assert_eq!(h[4], 7);
        assert_eq!(h[5], 0, "token protection");
        assert_eq!((h[6], h[7]), (0, 1), "a whole page: fragment 0 of 1");
        assert_eq!(&h[8..12], &[0, 0, 0, 7]);
        assert_eq!(&h[12..20], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&h[20..28], &[0xff; 8]);
        assert_eq!(&h[28..36], &[0, 0, 0, 0, 0, 0, 0x11, 0x22]);
        assert_eq!(&h[36..40], &[0, 0, 0x06, 0x7f]);
        assert_eq!(&h[44..48], &[0, 0, 0x40, 0]);
        assert_eq!(h[48], 1);
        assert_eq!(&h[52..56], &[0xA0, 0xB0, 0xC0, 0xD0]);
        assert_eq!(&h[56..64], &[0, 0, 0, 0, 0, 0, 0, 99]);
        assert_eq!(&h[64..80], &STREAM);
        assert_eq!(&h[80..88], &[0, 0, 0, 0, 0, 0, 0, 1], "second: counter 1");
        assert_eq!(DATAGRAM_LEN, 8304);
    }

    #[test]
    fn sealed_datagram_opens_to_the_page_and_each_fault_has_its_reason() {
        let d = sealed();
        let mut out = [0u8; PAGE_SIZE];
        assert_eq!(key().opener().open_bytes(&d[..], &mut out), Ok(header()));
        assert_eq!(&out[..], &page()[..]);
        assert_eq!(
            open(&key(), &d[..DATAGRAM_LEN - 1]),
            Err(DropReason::TooShort)
        );
        let mut long = d.to_vec();
        long.push(0);
        assert_eq!(open(&key(), &long), Err(DropReason::TooLong));
        let mut bad = d.clone();
        bad[0] = b'X';
        assert_eq!(open(&key(), &bad[..]), Err(DropReason::BadMagic));
        for old in [1, 2, 3, 4] {
            let mut bad = d.clone();
            bad[4] = old; // BLAKE3-tagged, then all-AES-GCM formats
            assert_eq!(open(&key(), &bad[..]), Err(DropReason::BadVersion));
        }
        // Flags, fragment index beyond the count, a count not a power of two or above 32.
        for (at, value) in [(5, 2), (6, 1), (7, 0), (7, 3), (7, 64), (50, 1)] {
            let mut bad = d.clone();
            bad[at] = value;
            assert_eq!(open(&key(), &bad[..]), Err(DropReason::BadHeader), "{at}");
        }
        // Corruption under the right token: the checksum catches it, in the page or the header.
        for at in [HEADER_LEN + 100, 30, 85, 90] {
            let mut bad = d.clone();
            bad[at] ^= 0x10;
            assert_eq!(open(&key(), &bad[..]), Err(DropReason::BadChecksum), "{at}");
        }
        // An aead datagram must leave the checksum field zero.
        let mut aead = sealed_by(&key().stream_with(STREAM, Protection::Aead));
        aead[90] = 1;
        assert_eq!(open(&key(), &aead[..]), Err(DropReason::BadHeader));
        let other = DatagramKey::new(8, [0x42; KEY_LEN]);
        assert_eq!(open(&other, &d[..]), Err(DropReason::UnknownKeyId));
        let wrong_secret = DatagramKey::new(7, [0x43; KEY_LEN]);
        assert_eq!(open(&wrong_secret, &d[..]), Err(DropReason::BadMac));
    }

    #[test]
    fn nonces_never_repeat_and_streams_are_independent() {
        let a = key().stream_with(STREAM, Protection::Aead);
        let b = key().stream_with([0x22; STREAM_ID_LEN], Protection::Aead);
        let (a0, a1, b0) = (sealed_by(&a), sealed_by(&a), sealed_by(&b));
        assert_ne!(a0[80..88], a1[80..88]);
        assert_ne!(a0[HEADER_LEN..], a1[HEADER_LEN..], "same page, other nonce");
        assert_ne!(
            a0[HEADER_LEN..],
            b0[HEADER_LEN..],
            "same nonce, other stream key"
        );
        let t = key().stream([0x33; STREAM_ID_LEN]);
        let (t0, u0) = (
            sealed_by(&t),
            sealed_by(&key().stream([0x44; STREAM_ID_LEN])),
        );
        assert_ne!(
            t0[HEADER_LEN + PAGE_SIZE..],
            u0[HEADER_LEN + PAGE_SIZE..],
            "other token"
        );
        // One opener takes all of them, both protections, in any order, through its cache.
        let mut opener = key().opener();
        let mut out = [0u8; PAGE_SIZE];
        for d in [&b0, &t0, &a1, &u0, &a0, &b0, &t0] {
            assert_eq!(opener.open_bytes(&d[..], &mut out), Ok(header()));
            assert_eq!(&out[..], &page()[..]);
        }
    }

    #[test]
    fn a_forged_stream_id_is_rejected_and_does_not_displace_a_cached_stream() {
        let mut opener = key().opener();
        let good = sealed();
        let mut out = [0u8; PAGE_SIZE];
        assert!(opener.open_bytes(&good[..], &mut out).is_ok());
        // Same cache slot (first two id bytes), another id: a forger's.
        let mut forged = good.clone();
        forged[64 + 5] ^= 0xFF;
        assert_eq!(
            opener.open_bytes(&forged[..], &mut out),
            Err(DropReason::BadMac)
        );
        let slot = usize::from(u16::from_le_bytes([STREAM[0], STREAM[1]])) % STREAM_CACHE_ENTRIES;
        assert!(matches!(&opener.streams[slot], Some(c) if c.id == STREAM));
    }

    #[test]
    fn a_flood_under_one_forged_stream_id_derives_its_token_once() {
        let mut opener = key().opener();
        let mut forged = sealed();
        forged[64 + 9] ^= 0xFF; // another stream id: its token is not the trailer
        let mut out = [0u8; PAGE_SIZE];
        for _ in 0..3 {
            assert_eq!(
                opener.open_bytes(&forged[..], &mut out),
                Err(DropReason::BadMac)
            );
        }
        let id: [u8; STREAM_ID_LEN] = forged[64..80].try_into().unwrap();
        let u = usize::from(id[2]) % UNPROVEN_CACHE_ENTRIES;
        assert_eq!(
            opener.unproven[u],
            Some((id, key().stream_token(&id))),
            "kept apart from the proven streams"
        );
        let slot = usize::from(u16::from_le_bytes([id[0], id[1]])) % STREAM_CACHE_ENTRIES;
        assert!(opener.streams[slot].is_none());
        // The genuine stream still opens and is proven as before.
        assert!(opener.open_bytes(&sealed()[..], &mut out).is_ok());
        assert!(matches!(&opener.streams[slot], Some(c) if c.id == STREAM));
    }

    #[test]
    fn a_wrong_token_is_rejected_before_the_page_is_read() {
        // A forger without the token: rejected as forged whatever the page and checksum, so a
        // flood of forgeries costs a comparison each (the checksum would say BadChecksum).
        let mut d = sealed();
        d[HEADER_LEN + PAGE_SIZE] ^= 1;
        d[HEADER_LEN] ^= 1;
        assert_eq!(open(&key(), &d[..]), Err(DropReason::BadMac));
    }

    #[test]
    fn an_exhausted_stream_refuses_to_seal() {
        let s = key().stream(STREAM);
        s.next_counter.store(u64::MAX, Ordering::Relaxed);
        let mut out = Box::new([0u8; DATAGRAM_LEN]);
        assert_eq!(
            s.seal(&header(), &page(), &mut out),
            Err(SealError::StreamExhausted)
        );
    }

    fn fragments_of(stream: &SealStream) -> Vec<Vec<u8>> {
        let mut out = Box::new([0u8; SEALED_PAGE_MAX]);
        let n = stream.seal_page(&header(), &page(), &mut out).unwrap();
        out[..n]
            .chunks_exact(stream.fragment_len())
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn the_mtu_gives_the_fewest_fragments_that_fit() {
        assert_eq!(fragments_for_mtu(0, false), Some(1), "unknown: whole pages");
        assert_eq!(fragments_for_mtu(65536, false), Some(1), "loopback");
        assert_eq!(fragments_for_mtu(9000, false), Some(1));
        assert_eq!(
            fragments_for_mtu(8332, false),
            Some(1),
            "exactly one whole datagram"
        );
        assert_eq!(fragments_for_mtu(8331, false), Some(2));
        assert_eq!(
            fragments_for_mtu(8351, true),
            Some(2),
            "IPv6 headers are longer"
        );
        assert_eq!(fragments_for_mtu(1500, false), Some(8));
        assert_eq!(fragments_for_mtu(1500, true), Some(8));
        assert_eq!(fragments_for_mtu(1280, true), Some(8));
        assert_eq!(fragments_for_mtu(576, false), Some(32));
        assert_eq!(fragments_for_mtu(395, false), None);
        for mtu in [576u32, 1000, 1500, 4000, 9000] {
            let k = fragments_for_mtu(mtu, false).unwrap();
            assert!(fragment_datagram_len(k) + 28 <= mtu as usize, "{mtu}");
        }
    }

    #[test]
    fn a_split_page_opens_piece_by_piece_under_both_protections() {
        for protection in [Protection::Token, Protection::Aead] {
            let stream = key().stream_with(STREAM, protection).with_fragments(8);
            assert_eq!(
                (stream.fragment_len(), stream.sealed_len()),
                (1136, 9 * 1136),
                "8 fragments and the parity piece"
            );
            let frags = fragments_of(&stream);
            let again = fragments_of(&stream);
            let mut opener = key().opener();
            let mut joined = [0u8; PAGE_SIZE];
            assert_eq!(frags.len(), 9);
            let mut parity = [0u8; 1024];
            for (i, f) in frags[..8].iter().enumerate().rev() {
                assert_eq!(f.len(), 1136);
                assert_eq!((f[6], f[7]), (i as u8, 8));
                assert_eq!(
                    &f[52..56],
                    &[0xA0, 0xB0, 0xC0, 0xD0],
                    "blkno for the steering"
                );
                assert_eq!(u64::from_be_bytes(f[80..88].try_into().unwrap()), i as u64);
                let mut out = [0u8; PAGE_SIZE];
                let o = opener.open_any_bytes(f, &mut out).unwrap();
                assert_eq!(o.hdr, header());
                assert_eq!(
                    o.piece,
                    Piece {
                        index: i as u8,
                        count: 8,
                        stream_id: STREAM,
                        page_id: 0
                    }
                );
                joined[o.piece.offset()..][..1024].copy_from_slice(&out[..1024]);
                xor_into(&mut parity, &out[..1024]);
                // A whole-page opener turns a fragment away.
                assert_eq!(opener.open_bytes(f, &mut out), Err(DropReason::TooShort));
            }
            assert_eq!(&joined[..], &page()[..]);
            // The parity piece: index 8 of 8, the next counter, the XOR of the pieces.
            let mut out = [0u8; PAGE_SIZE];
            let o = opener.open_any_bytes(&frags[8], &mut out).unwrap();
            assert!(o.piece.is_parity());
            assert_eq!((o.piece.index, o.piece.page_id), (8, 0));
            assert_eq!(&out[..1024], &parity[..]);
            // The next page of the stream: counters 9..18, so another page id.
            let o = opener
                .open_any_bytes(&again[3], &mut [0u8; PAGE_SIZE])
                .unwrap();
            assert_eq!((o.piece.index, o.piece.page_id), (3, 9));
        }
    }

    #[test]
    fn a_fragment_with_a_wrong_length_or_count_is_rejected_before_its_token() {
        let frags = fragments_of(&key().stream(STREAM).with_fragments(8));
        let f = &frags[2];
        assert_eq!(open_any(&f[..f.len() - 1]), Err(DropReason::TooShort));
        let mut long = f.clone();
        long.push(0);
        assert_eq!(open_any(&long), Err(DropReason::TooLong));
        // Another count changes the length it must have: too short or too long, never opened.
        let mut other = f.clone();
        other[7] = 4;
        assert_eq!(open_any(&other), Err(DropReason::TooShort));
        other[7] = 16;
        assert_eq!(open_any(&other), Err(DropReason::TooLong));
        assert_eq!(open_any(&f[..40]), Err(DropReason::TooShort));
    }

    fn open_any(d: &[u8]) -> Result<Opened, DropReason> {
        key().opener().open_any_bytes(d, &mut [0u8; PAGE_SIZE])
    }

    proptest! {
        #[test]
        fn any_bit_flip_of_a_fragment_is_rejected(frag in 0usize..8, at in 0usize..1136, bit in 0u8..8, aead in any::<bool>()) {
            let protection = if aead { Protection::Aead } else { Protection::Token };
            let mut frags = fragments_of(&key().stream_with(STREAM, protection).with_fragments(8));
            frags[frag][at] ^= 1 << bit;
            prop_assert!(open_any(&frags[frag]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_validate_as_any_datagram(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
            prop_assert!(open_any(&bytes).is_err());
        }

        /// Opened where it lies or copied out first, a datagram gets the same verdict and the
        /// same piece: genuine fragments and whole pages of either protection, with or
        /// without one byte changed, and made-up bytes.
        #[test]
        fn opening_in_place_agrees_with_opening_a_copy(
            count in prop::sample::select(vec![1u8, 2, 8]),
            frag in 0usize..9,
            flip in prop::option::of((0usize..DATAGRAM_LEN, 1u8..=255)),
            aead in any::<bool>(),
            junk in prop::collection::vec(any::<u8>(), 0..1200),
        ) {
            let protection = if aead { Protection::Aead } else { Protection::Token };
            let frags = fragments_of(&key().stream_with(STREAM, protection).with_fragments(count));
            for mut d in [frags[frag % frags.len()].clone(), junk.clone()] {
                if let Some((at, x)) = flip {
                    let at = at % d.len().max(1);
                    if let Some(b) = d.get_mut(at) {
                        *b ^= x;
                    }
                }
                // Each opener meets the stream for the first time, as the other did.
                let mut copied = [0u8; PAGE_SIZE];
                let by_copy = key().opener().open_any_bytes(&d, &mut copied);
                let by_place = key().opener().open_in_place(&mut d);
                prop_assert_eq!(by_copy, by_place);
                if let Ok(o) = by_copy {
                    let size = o.piece.size();
                    prop_assert_eq!(&d[HEADER_LEN..HEADER_LEN + size], &copied[..size]);
                }
            }
        }

        #[test]
        fn any_bit_flip_is_rejected(at in 0usize..DATAGRAM_LEN, bit in 0u8..8, aead in any::<bool>()) {
            let protection = if aead { Protection::Aead } else { Protection::Token };
            let mut d = sealed_by(&key().stream_with(STREAM, protection));
            d[at] ^= 1 << bit;
            prop_assert!(open(&key(), &d[..]).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_validate_or_panic(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
            prop_assert!(open(&key(), &bytes).is_err());
        }

        #[test]
        fn arbitrary_bodies_under_a_valid_header_never_validate(body in prop::collection::vec(any::<u8>(), PAGE_SIZE + TAG_LEN), aead in any::<bool>()) {
            let protection = if aead { Protection::Aead } else { Protection::Token };
            let mut d = sealed_by(&key().stream_with(STREAM, protection));
            d[HEADER_LEN..].copy_from_slice(&body);
            prop_assert_eq!(open(&key(), &d[..]), Err(DropReason::BadMac));
        }

        #[test]
        fn headers_round_trip(key_id in any::<u32>(), reqid in any::<u64>(), lsn in any::<u64>(), nms in any::<u64>(),
                              s in any::<u32>(), d in any::<u32>(), r in any::<u32>(), f in 0..=MAX_FORKNUM, b in any::<u32>(), t in any::<u64>()) {
            let h = DatagramHeader { key_id, reqid, request_lsn: lsn, not_modified_since: nms,
                tag: RelTag::new(s, d, r, f).block(b), sent_at_ns: t };
            prop_assert_eq!(DatagramHeader::decode(&h.encode()), Ok(h));
        }
    }
}
