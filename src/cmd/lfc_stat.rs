//! `udp-prefetch lfc stat`: geometry and counters of a local file cache.
//!
//! Attaches like any other process (shared lock, no writes), so it can run next to the worker
//! daemon and backends; the counters are summed over every process that uses the file. It also
//! shows the worker daemon the cache's record names: alive when its last heartbeat is younger
//! than `lfc::DAEMON_STALE_NS`; the timeline the cache is bound to (`lfc::Binding`), if any;
//! and the datagrams the daemon received per sender since it started (`lfc::SenderCounts`).
//! A sender is the source address of a page server's sender thread: across hosts its IP names
//! the shard; the file does not know shard numbers (the page server's sender ports are its
//! own), so the rows name addresses.
//!
//! Owns: its flags and the two renderings, human and JSON. Reads the cache only through `lfc`'s
//! public API, opens no socket (a daemon is alive by its heartbeat's age, not by a probe), and of
//! this crate uses only `protocol::identity`, to print ids.

use super::{BadInput, Outcome};
use crate::protocol::identity::NeonId;
use lfc::{DaemonRecord, Lfc, LfcGeometry, LfcStats};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct LfcArgs {
    #[command(subcommand)]
    pub command: LfcCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LfcCommand {
    /// Print the cache's geometry and statistics.
    Stat {
        /// Path of the LFC file.
        #[arg(long)]
        lfc: PathBuf,
        /// One JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: LfcArgs) -> anyhow::Result<Outcome> {
    match args.command {
        LfcCommand::Stat { lfc, json } => stat(&lfc, json),
    }
}

fn stat(path: &Path, json: bool) -> anyhow::Result<Outcome> {
    // Every way the file can be unusable (missing, not an LFC, truncated, other version, locked
    // for re-creation) is the caller's input problem: exit status 2.
    let cache = Lfc::open(path).map_err(|e| BadInput(format!("cannot read LFC: {e}")))?;
    let s = cache.stats();
    let g = cache.geometry();
    let daemon = DaemonView::read(&cache);
    let binding = cache.binding();
    let senders = cache.sender_counts();
    if json {
        let mut m = json_object(&cache, &g, &s);
        daemon.put_json(&mut m);
        put_binding_json(binding, &mut m);
        put_senders_json(&senders, &mut m);
        println!("{}", serde_json::Value::Object(m));
    } else {
        print_human(&cache, &g, &s);
        daemon.print_human();
        match binding {
            Some(b) => println!("  timeline   {b}"),
            None => println!("  timeline   unbound (the first backend or prewarm run binds it)"),
        }
        print_senders(&senders);
    }
    Ok(Outcome::Success)
}

fn json_object(
    cache: &Lfc,
    g: &LfcGeometry,
    s: &LfcStats,
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        m.insert(k.to_string(), v);
    };
    put("path", cache.path().display().to_string().into());
    put("format_version", lfc::FORMAT_VERSION.into());
    put("page_size", (lfc::PAGE_SIZE as u64).into());
    put("capacity_pages", g.capacity_pages.into());
    put("used_pages", s.used_pages.into());
    put("busy_pages", s.busy_pages.into());
    put("busy_dead_pages", s.busy_dead_pages.into());
    put("file_bytes", g.file_len.into());
    put("metadata_bytes", g.metadata_bytes.into());
    put("index_buckets", g.index_buckets.into());
    put("lwlsn_slots", g.lwlsn_slots.into());
    put("requested_slots", g.requested_slots.into());
    put("key_id", cache.key_id().into());
    put("creator_pid", cache.creator_pid().into());
    put("created_unix_ms", cache.created_unix_ms().into());
    put("created", rfc3339_utc(cache.created_unix_ms()).into());
    put("lwlsn_floor", cache.lwlsn_floor().into());
    // What this process's mapping got (`Lfc::huge_pages`); every process maps the same pages.
    let huge = cache.huge_pages();
    put("huge_pages", huge.backed().into());
    put("huge_pages_filesystem", huge.filesystem.into());
    put(
        "huge_pages_mount_option",
        huge.mount_huge
            .clone()
            .map_or(serde_json::Value::Null, Into::into),
    );
    put("huge_pages_sampled_chunks", huge.sampled_chunks.into());
    put("huge_pages_huge_chunks", huge.huge_chunks.into());
    put("hits", s.hits.into());
    put("misses", s.misses.into());
    put("hit_ratio", s.hit_ratio().into());
    put("installs", s.installs.into());
    put("writes", s.writes.into());
    put("stale_rejects", s.stale_rejects.into());
    put("already_present", s.already_present.into());
    put("no_room", s.no_room.into());
    put("evictions", s.evictions.into());
    put("capped_evictions", s.capped_evictions.into());
    put("drops", s.drops.into());
    put("superseded_writes", s.superseded_writes.into());
    put("reservations", s.reservations.into());
    put("abandons", s.abandons.into());
    put("lock_breaks", s.lock_breaks.into());
    put("reclaims", s.reclaims.into());
    put("busy", s.busy.into());
    put("requested_marks", s.requested_marks.into());
    put("requested_duplicates", s.requested_duplicates.into());
    put("wait_arrivals", s.wait_arrivals.into());
    put("wait_timeouts", s.wait_timeouts.into());
    m
}

/// `bound`, and `tenant_id`, `timeline_id` (32 hex digits) and `system_identifier` (`null`
/// when unbound or none was announced). The identifier is a decimal string, as
/// `pg_controldata` prints it: at about 7e18 it is beyond the integers a JSON reader that uses
/// doubles keeps exact.
fn put_binding_json(b: Option<lfc::Binding>, m: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    m.insert("bound".into(), b.is_some().into());
    let id = |id: [u8; 16]| Value::from(NeonId(id).to_string());
    m.insert(
        "tenant_id".into(),
        b.map_or(Value::Null, |b| id(b.tenant_id)),
    );
    m.insert(
        "timeline_id".into(),
        b.map_or(Value::Null, |b| id(b.timeline_id)),
    );
    m.insert(
        "system_identifier".into(),
        b.and_then(|b| b.system_id)
            .map_or(Value::Null, |s| s.to_string().into()),
    );
}

/// `senders`: one `{addr, installed, dropped}` per sender in address order;
/// `senders_other`: `{installed, dropped}` of senders past the table's bound and IPv6 ones;
/// `sender_installed_total`, `sender_dropped_total`: the sums, `other` included.
fn put_senders_json(c: &lfc::SenderCounts, m: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let rows: Vec<_> = c
        .senders
        .iter()
        .map(
            |s| json!({"addr": s.addr.to_string(), "installed": s.installed, "dropped": s.dropped}),
        )
        .collect();
    m.insert("senders".into(), rows.into());
    m.insert(
        "senders_other".into(),
        json!({"installed": c.other_installed, "dropped": c.other_dropped}),
    );
    m.insert("sender_installed_total".into(), c.installed().into());
    m.insert("sender_dropped_total".into(), c.dropped().into());
}

fn print_senders(c: &lfc::SenderCounts) {
    if c.senders.is_empty() && c.other_installed + c.other_dropped == 0 {
        println!("  senders    none since the daemon started");
        return;
    }
    println!(
        "  senders    datagrams since the daemon started, by sender (a page server's sender \
         thread; across hosts the IP names the shard): {} installed, {} dropped",
        c.installed(),
        c.dropped()
    );
    for s in &c.senders {
        println!(
            "             {:<22} {} installed, {} dropped",
            s.addr.to_string(),
            s.installed,
            s.dropped
        );
    }
    if c.other_installed + c.other_dropped > 0 {
        println!(
            "             {:<22} {} installed, {} dropped (senders past the first {}, and IPv6)",
            "other",
            c.other_installed,
            c.other_dropped,
            lfc::SENDER_SLOTS
        );
    }
}

/// The cache's daemon record as seen now.
struct DaemonView {
    record: Option<DaemonRecord>,
    /// Heartbeat age in ns (CLOCK_MONOTONIC now minus the record's heartbeat).
    age_ns: u64,
}

impl DaemonView {
    fn read(cache: &Lfc) -> DaemonView {
        let record = cache.daemon();
        let now = lfc::monotonic_ns();
        DaemonView {
            record,
            age_ns: record.map_or(0, |r| r.heartbeat_age_ns(now)),
        }
    }

    fn alive(&self) -> bool {
        self.record.is_some() && self.age_ns < lfc::DAEMON_STALE_NS
    }

    fn put_json(&self, m: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::Value;
        let r = self.record.as_ref();
        m.insert("daemon_alive".into(), self.alive().into());
        m.insert(
            "daemon_addr".into(),
            r.map_or(Value::Null, |r| r.addr.to_string().into()),
        );
        m.insert("daemon_pid".into(), r.map_or(Value::Null, |r| r.pid.into()));
        m.insert(
            "daemon_heartbeat_age_ms".into(),
            r.map_or(Value::Null, |_| (self.age_ns / 1_000_000).into()),
        );
        m.insert(
            "daemon_started_unix_ms".into(),
            r.map_or(Value::Null, |r| r.started_unix_ms.into()),
        );
        m.insert(
            "daemon_started".into(),
            r.map_or(Value::Null, |r| rfc3339_utc(r.started_unix_ms).into()),
        );
        m.insert(
            "daemon_generation".into(),
            r.map_or(Value::Null, |r| r.generation.into()),
        );
    }

    fn print_human(&self) {
        match &self.record {
            None => println!("  daemon     none registered (no worker daemon serves this cache)"),
            Some(r) => {
                println!(
                "  daemon     {} pid {} on {}, last heartbeat {} ms ago, started {}, generation {}",
                if self.alive() { "alive:" } else { "NOT RESPONDING:" },
                r.pid,
                r.addr,
                self.age_ns / 1_000_000,
                rfc3339_utc(r.started_unix_ms),
                r.generation
            )
            }
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, e.g. `2026-12-02T02:07:50.831Z`: what a
/// person reads (`--json` keeps the raw milliseconds too). Hand-rolled (days to civil date, as
/// in Howard Hinnant's `civil_from_days`) rather than a date crate for one line of output.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        unix_ms % 1000
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn print_human(cache: &Lfc, g: &LfcGeometry, s: &LfcStats) {
    let data = g.capacity_pages * lfc::PAGE_SIZE as u64;
    println!("LFC {}", cache.path().display());
    println!(
        "  format v{}, key id {:#010x}, created by pid {} at {}",
        lfc::FORMAT_VERSION,
        cache.key_id(),
        cache.creator_pid(),
        rfc3339_utc(cache.created_unix_ms())
    );
    println!(
        "  capacity   {} pages ({:.1} MiB of pages), file {:.1} MiB, metadata {:.2} MiB ({:.2} % of pages)",
        g.capacity_pages,
        mib(data),
        mib(g.file_len),
        mib(g.metadata_bytes),
        pct(g.metadata_bytes, data)
    );
    println!("  huge pages {}", cache.huge_pages().describe());
    if !cache.huge_pages().backed() {
        println!("             fix: {}", lfc::huge_pages_advice(cache.path()));
    }
    println!(
        "  used       {} pages ({:.1} %), {} busy (reserved or being filled), {} of them by dead processes",
        s.used_pages,
        pct(s.used_pages, g.capacity_pages),
        s.busy_pages,
        s.busy_dead_pages
    );
    println!(
        "  lookups    {} hits, {} misses, hit ratio {:.1} %",
        s.hits,
        s.misses,
        100.0 * s.hit_ratio()
    );
    println!(
        "  installs   {} accepted, {} stale rejects, {} already present, {} no room",
        s.installs, s.stale_rejects, s.already_present, s.no_room
    );
    println!(
        "  writes     {} stored, {} superseded; {} cached copies dropped as modified",
        s.writes, s.superseded_writes, s.drops
    );
    println!(
        "  evictions  {} ({} by a capped CLOCK sweep)",
        s.evictions, s.capped_evictions
    );
    println!(
        "  zero-copy  {} reservations, {} abandoned",
        s.reservations, s.abandons
    );
    println!(
        "  prefetch   {} requests marked, {} duplicates avoided; waits: {} arrived, {} timed out",
        s.requested_marks, s.requested_duplicates, s.wait_arrivals, s.wait_timeouts
    );
    println!(
        "  recovery   {} locks broken and {} frames reclaimed from dead processes, {} busy refusals",
        s.lock_breaks, s.reclaims, s.busy
    );
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(rfc3339_utc(1_796_177_270_831), "2026-12-02T02:07:50.831Z");
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
