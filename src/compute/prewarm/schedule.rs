//! Prewarm's request schedule, sans-IO: which pages to request by UDP now, which to hand to TCP
//! (timed out while TCP has room, or out of attempts), and which to request again (adaptive
//! timeout with backoff). Time is passed in.
//!
//! Owns: each page's request state (pending, requested at a time with its attempt, handed to TCP,
//! done), the congestion window, the smoothed round trip and the outcome counts. Knows pages only
//! by their index in the run's list: no tag, no LFC, clock or socket; `driver::Driver` passes
//! `now_ns`, reports arrivals and TCP answers, and sends what it is told to.

use std::collections::VecDeque;

/// Pages UDP keeps in flight while it has stalled (`Schedule::stalled`), as a probe.
pub const STALL_PROBE_PAGES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleConfig {
    /// Timeout of the first request before any arrival has been observed.
    pub initial_timeout_ns: u64,
    pub min_timeout_ns: u64,
    pub max_timeout_ns: u64,
    /// Each retry waits this many times longer than the previous attempt.
    pub backoff: f64,
    /// UDP attempts per page before it goes to TCP.
    pub max_udp_attempts: u32,
    /// Pages requested and not yet arrived, at most: the window grows by one page per arrival
    /// (doubling per round trip) up to this, and halves when requests time out, so an unpaced
    /// prewarm settles at what the daemon can take instead of overrunning its socket buffer.
    /// The default, 8192 pages, fits in one daemon thread's default receive buffer (64 MiB
    /// asked, 128 MiB granted, about 10 KiB of it per datagram): one sender's datagrams all
    /// hash to one `SO_REUSEPORT` socket, and at 16384 a daemon that fell behind lost 2–8 %
    /// of them in the kernel before any timeout could halve the window.
    pub window_pages: usize,
    /// The window's floor and starting size.
    pub min_window_pages: usize,
    /// UDP counts as stalled (`Schedule::stalled`) only after at least this long without an
    /// arrival, however short the first timeout. A daemon thread descheduled for a few
    /// milliseconds on a busy compute is not a dead daemon: with the stall at the 2 ms minimum
    /// timeout, a daemon under CI load handed 832 of 2000 pages of a healthy run to
    /// TCP. A partitioned link still fails over within this plus one TCP batch.
    pub min_stall_ns: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            initial_timeout_ns: 20_000_000,
            min_timeout_ns: 2_000_000,
            max_timeout_ns: 1_000_000_000,
            backoff: 2.0,
            max_udp_attempts: 3,
            window_pages: 8_192,
            min_window_pages: 256,
            min_stall_ns: 10_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Requested { at_ns: u64, attempt: u32 },
    Tcp,
    Done,
}

/// Outcome counters, in the report's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleCounts {
    pub requested: u64,
    pub via_udp_first: u64,
    pub via_udp_retry: u64,
    pub via_tcp: u64,
    pub skipped_present: u64,
    pub skipped_gone: u64,
    pub retries: u64,
}

#[derive(Debug)]
pub struct Schedule {
    config: ScheduleConfig,
    state: Vec<State>,
    /// Next never-requested page.
    cursor: usize,
    /// Requested pages in request order (a page may appear again after a retry; stale entries
    /// are skipped by checking its state).
    outstanding: VecDeque<(usize, u64)>,
    in_flight: usize,
    tcp_queue: VecDeque<usize>,
    done: usize,
    srtt_ns: Option<f64>,
    /// Current congestion window, pages.
    window: f64,
    /// When the window was last cut, so one burst of losses cuts it once.
    last_cut_ns: u64,
    /// A cap on the window set from outside (prewarm yielding to foreground reads);
    /// `usize::MAX` = none. Retries are not held back by it: they are of pages in flight.
    limit: usize,
    /// Pages the TCP path may have queued at once for pages whose UDP request timed out
    /// (`set_tcp_room`); 0: every attempt is used on UDP first.
    tcp_room: usize,
    /// When the last page arrived by UDP, else when the first was requested, and whether a
    /// request timed out since: UDP has stalled then, once no page arrived for a first timeout
    /// (`stalled`).
    progress_ns: Option<u64>,
    timed_out_since_progress: bool,
    /// A GetPage round trip on the run's connection (`observe_tcp_rtt`): before any page
    /// arrived, the first timeout is four of them when that is shorter than the configured one.
    tcp_rtt_ns: Option<f64>,
    counts: ScheduleCounts,
}

impl Schedule {
    pub fn new(pages: usize, config: ScheduleConfig) -> Self {
        assert!(config.min_window_pages > 0 && config.window_pages >= config.min_window_pages);
        assert!(config.max_udp_attempts > 0 && config.backoff >= 1.0);
        Schedule {
            config,
            state: vec![State::Pending; pages],
            cursor: 0,
            outstanding: VecDeque::new(),
            in_flight: 0,
            tcp_queue: VecDeque::new(),
            done: 0,
            srtt_ns: None,
            window: config.min_window_pages as f64,
            last_cut_ns: 0,
            limit: usize::MAX,
            tcp_room: 0,
            progress_ns: None,
            timed_out_since_progress: false,
            tcp_rtt_ns: None,
            counts: ScheduleCounts::default(),
        }
    }

    pub fn counts(&self) -> ScheduleCounts {
        self.counts
    }

    pub fn pages(&self) -> usize {
        self.state.len()
    }

    pub fn done(&self) -> usize {
        self.done
    }

    pub fn is_complete(&self) -> bool {
        self.done == self.state.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// A request-response round trip measured on the run's TCP connection. A page sent by UDP
    /// takes about what its GetPage answer would (the same request, a response of the same
    /// size), so before any arrival four of them bound the first timeout: with the configured
    /// 1-20 ms and round trips of 0.5-2.5 ms in the simulator, runs of a dozen pages over a
    /// partitioned link waited that long for nothing where TCP alone took 1-6 ms.
    pub fn observe_tcp_rtt(&mut self, rtt_ns: u64) {
        self.tcp_rtt_ns = Some(rtt_ns as f64);
    }

    /// The timeout of attempt `attempt` (0-based).
    pub fn timeout_ns(&self, attempt: u32) -> u64 {
        let initial = self.config.initial_timeout_ns as f64;
        let base = match (self.srtt_ns, self.tcp_rtt_ns) {
            (Some(s), _) => 4.0 * s,
            (None, Some(t)) => initial.min(4.0 * t),
            (None, None) => initial,
        };
        let t = base * self.config.backoff.powi(attempt as i32);
        (t as u64).clamp(self.config.min_timeout_ns, self.config.max_timeout_ns)
    }

    fn finish(&mut self, i: usize) -> bool {
        if self.state[i] == State::Done {
            return false;
        }
        if matches!(self.state[i], State::Requested { .. }) {
            self.in_flight -= 1;
        }
        self.state[i] = State::Done;
        self.done += 1;
        true
    }

    /// The page was already cached before prewarm asked for it.
    pub fn skip_present(&mut self, i: usize) {
        if self.finish(i) {
            self.counts.skipped_present += 1;
        }
    }

    /// The page no longer exists (relation dropped or truncated).
    pub fn skip_gone(&mut self, i: usize) {
        if self.finish(i) {
            self.counts.skipped_gone += 1;
        }
    }

    /// Caps the pages in flight at `pages` below the window (`usize::MAX` lifts the cap). The
    /// window itself keeps growing with arrivals meanwhile: the cap is the caller's policy, not
    /// a sign of congestion.
    pub fn limit_in_flight(&mut self, pages: usize) {
        self.limit = pages;
    }

    /// Lets up to `pages` pages whose UDP request timed out wait for TCP at once, instead of
    /// being requested by UDP again: TCP brings a page in a round trip, while a retry costs
    /// another timeout of twice the last, and a page lost again a third. So a lost page costs
    /// about what TCP alone would have (the backends' read path sends its lost pages to its TCP
    /// pipeline alike), and retries by UDP are left for when TCP has more than it can take.
    /// In the simulator, runs of a few dozen pages on links losing 14-40 % spent 68-245 ms in
    /// backed-off retries where TCP alone took 3-6 ms, and the backends waited behind them.
    pub fn set_tcp_room(&mut self, pages: usize) {
        self.tcp_room = pages;
    }

    /// The run's tail: nothing left to request, and what is in flight fits in TCP's room. Then
    /// the run's end waits on its slowest page, and a page not there an arrival time after its
    /// request (`tail_wait_ns`, not the timeout of four) is fetched over TCP: a lost page costs
    /// a round trip more than TCP alone, not three arrival times. Over lossy links of 3-7 ms
    /// arrival times in the simulator, a run of 27 pages took 33 ms where TCP alone took 5 ms.
    /// Before the tail a late page delays nothing (the rest of the run flows meanwhile), and the
    /// timeout keeps late arrivals from being fetched twice.
    fn in_tail(&self) -> bool {
        self.cursor >= self.state.len() && self.in_flight + self.tcp_queue.len() <= self.tcp_room
    }

    /// How long a page in flight is waited for in the tail (`in_tail`): the smoothed arrival
    /// time, at least the least timeout; not at all before any page arrived by UDP. A run whose
    /// whole rest fits in a TCP batch and that UDP has not served yet is served by TCP in one
    /// round trip: waiting for UDP first cost runs of a few dozen pages two round trips where
    /// TCP alone took one (in the simulator, three such runs took 55 ms against 20).
    fn tail_wait_ns(&self) -> u64 {
        self.srtt_ns.map_or(0, |s| {
            (s as u64).clamp(self.config.min_timeout_ns, self.config.max_timeout_ns)
        })
    }

    /// Fills `out` with up to `max` pages to request now: expired requests first (to the TCP
    /// queue while it has room (`set_tcp_room`), else retried), then new pages, within the
    /// window. Pages out of UDP attempts go to the TCP queue.
    pub fn next_requests(&mut self, now_ns: u64, max: usize, out: &mut Vec<usize>) {
        out.clear();
        self.expire(now_ns, max, out);
        self.request_new(now_ns, max, out);
    }

    /// The expired requests, oldest first, while `out` holds fewer than `max`: each goes to the
    /// TCP queue (its last UDP attempt, room in the queue, or a stalled run) or is retried (into
    /// `out`); the window is halved at most once a round trip.
    fn expire(&mut self, now_ns: u64, max: usize, out: &mut Vec<usize>) {
        let tail = self.in_tail();
        // Retries: the outstanding queue is in request order, so expiries come in order too.
        while out.len() < max {
            let Some(&(i, at)) = self.outstanding.front() else {
                break;
            };
            let State::Requested { at_ns, attempt } = self.state[i] else {
                self.outstanding.pop_front();
                continue;
            };
            if at_ns != at {
                self.outstanding.pop_front(); // superseded by a later request of the same page
                continue;
            }
            // In the tail of a stalled run nothing in flight is worth waiting for.
            let wait_ns = match (tail, self.stalled(now_ns)) {
                (true, true) => 0,
                (true, false) => self.tail_wait_ns(),
                (false, _) => self.timeout_ns(attempt),
            };
            if now_ns < at_ns + wait_ns {
                break;
            }
            self.outstanding.pop_front();
            self.timed_out_since_progress = true;
            let rtt = self
                .srtt_ns
                .unwrap_or(self.config.initial_timeout_ns as f64) as u64;
            if now_ns.saturating_sub(self.last_cut_ns) >= rtt {
                self.window = (self.window / 2.0).max(self.config.min_window_pages as f64);
                self.last_cut_ns = now_ns;
            }
            // Stalled, a retry is a request into the same silence: TCP takes it, however long
            // its queue.
            if attempt + 1 >= self.config.max_udp_attempts
                || self.tcp_queue.len() < self.tcp_room
                || self.stalled(now_ns)
            {
                self.state[i] = State::Tcp;
                self.in_flight -= 1;
                self.tcp_queue.push_back(i);
            } else {
                self.state[i] = State::Requested {
                    at_ns: now_ns,
                    attempt: attempt + 1,
                };
                self.outstanding.push_back((i, now_ns));
                self.counts.retries += 1;
                out.push(i);
            }
        }
    }

    /// New pages, in order, into `out` while it holds fewer than `max` and the window (or,
    /// stalled, a probe's worth) has room.
    fn request_new(&mut self, now_ns: u64, max: usize, out: &mut Vec<usize>) {
        // While stalled, UDP keeps a probe's worth in flight (the first of them to arrive ends
        // the stall), unless what is left fits in TCP's room: then TCP takes it all, and a probe
        // would only be waited for at the end.
        let left = self.state.len() - self.cursor;
        let in_flight_max = if !self.stalled(now_ns) {
            self.window as usize
        } else if left + self.tcp_queue.len() <= self.tcp_room {
            0
        } else {
            STALL_PROBE_PAGES.min(self.window as usize)
        };
        while out.len() < max
            && self.in_flight < in_flight_max.min(self.limit)
            && self.cursor < self.state.len()
        {
            let i = self.cursor;
            self.cursor += 1;
            if self.state[i] != State::Pending {
                continue;
            }
            self.state[i] = State::Requested {
                at_ns: now_ns,
                attempt: 0,
            };
            self.in_flight += 1;
            self.outstanding.push_back((i, now_ns));
            self.progress_ns.get_or_insert(now_ns);
            self.counts.requested += 1;
            out.push(i);
        }
    }

    /// Whether UDP has stalled at `now_ns`: a request timed out and no page arrived for a
    /// first timeout (`timeout_ns(0)`), counted from the last arrival or the first request.
    /// Then TCP takes the pages not requested yet (`take_tcp`) and UDP keeps only a probe in
    /// flight (`STALL_PROBE_PAGES`) until a page arrives again: TCP is the floor. A partitioned link or a dead daemon otherwise left
    /// the run at one window of UDP requests per timeout, each window's pages then fetched over
    /// TCP: in the simulator, runs of a few dozen pages took 20-100 ms where TCP alone took
    /// 1-12 ms. A link that loses some pages but delivers the rest never stalls.
    pub fn stalled(&self, now_ns: u64) -> bool {
        self.timed_out_since_progress
            && self.progress_ns.is_some_and(|since| {
                now_ns >= since + self.timeout_ns(0).max(self.config.min_stall_ns)
            })
    }

    /// Pages currently requested and not arrived, for the shell to check.
    pub fn requested(&self) -> impl Iterator<Item = usize> + '_ {
        self.requested_at().map(|(i, _)| i)
    }

    /// [`requested`](Self::requested) in request order, with when each was (last) requested.
    pub fn requested_at(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.outstanding.iter().copied().filter(
            |&(i, at)| matches!(self.state[i], State::Requested { at_ns, .. } if at_ns == at),
        )
    }

    /// The smoothed time from request to arrival, once a page has arrived.
    pub fn srtt_ns(&self) -> Option<u64> {
        self.srtt_ns.map(|s| s as u64)
    }

    /// The page is in the LFC now.
    pub fn on_arrived(&mut self, i: usize, now_ns: u64) {
        let State::Requested { at_ns, attempt } = self.state[i] else {
            return;
        };
        let sample = now_ns.saturating_sub(at_ns) as f64;
        self.progress_ns = Some(now_ns);
        self.timed_out_since_progress = false;
        self.window = (self.window + 1.0).min(self.config.window_pages as f64);
        self.srtt_ns = Some(self.srtt_ns.map_or(sample, |s| 0.875 * s + 0.125 * sample));
        if self.finish(i) {
            if attempt == 0 {
                self.counts.via_udp_first += 1;
            } else {
                self.counts.via_udp_retry += 1;
            }
        }
    }

    /// Sends everything not yet done to TCP (e.g. nothing ever arrives: no daemon).
    pub fn fail_over_to_tcp(&mut self) {
        for i in 0..self.state.len() {
            match self.state[i] {
                State::Pending => {
                    self.state[i] = State::Tcp;
                    self.tcp_queue.push_back(i);
                }
                State::Requested { .. } => {
                    self.state[i] = State::Tcp;
                    self.in_flight -= 1;
                    self.tcp_queue.push_back(i);
                }
                State::Tcp | State::Done => {}
            }
        }
        self.cursor = self.state.len();
        self.outstanding.clear();
    }

    /// Up to `max` pages to fetch over TCP now: those handed to TCP, then up to `new` of the
    /// next pages not requested yet whenever UDP has stalled (`stalled`), and before any page
    /// arrived by UDP when they are all that is left and fit in the batch. TCP is the floor:
    /// a run's last pages held back by UDP's window do not wait a round trip of UDP for it to
    /// open, nor does anything wait on a UDP that stopped delivering. Otherwise UDP carries the
    /// run and TCP only what it lost. In the simulator (400 `heavy` seeds, prewarms of a few
    /// dozen pages in windows of 4-64) the first of these took the runs slower than TCP alone
    /// from 23 to 3.
    pub fn take_tcp(&mut self, max: usize, new: usize, now_ns: u64, out: &mut Vec<usize>) {
        out.clear();
        while out.len() < max {
            match self.tcp_queue.pop_front() {
                Some(i) if self.state[i] == State::Tcp => out.push(i),
                Some(_) => {}
                None => break,
            }
        }
        let left = self.state.len() - self.cursor;
        let starting = !self.any_udp_arrival() && left <= max.saturating_sub(out.len());
        if !starting && !self.stalled(now_ns) {
            return;
        }
        let max = max.min(out.len().saturating_add(new));
        while out.len() < max && self.cursor < self.state.len() {
            let i = self.cursor;
            self.cursor += 1;
            if self.state[i] == State::Pending {
                self.state[i] = State::Tcp;
                out.push(i);
            }
        }
    }

    /// A page fetched over TCP (or found arrived meanwhile) is done.
    pub fn on_tcp_done(&mut self, i: usize) {
        if self.finish(i) {
            self.counts.via_tcp += 1;
        }
    }

    /// Whether any page has arrived by UDP so far.
    pub fn any_udp_arrival(&self) -> bool {
        self.counts.via_udp_first + self.counts.via_udp_retry > 0
    }

    /// Stops requesting new pages (the cache is full): what is not requested yet is dropped
    /// from the plan and reported as not done.
    pub fn stop_new_requests(&mut self) {
        self.cursor = self.state.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ScheduleConfig {
        ScheduleConfig {
            initial_timeout_ns: 100,
            min_timeout_ns: 10,
            max_timeout_ns: 10_000,
            backoff: 2.0,
            max_udp_attempts: 3,
            window_pages: 4,
            min_window_pages: 4,
            min_stall_ns: 0,
        }
    }

    #[test]
    fn window_retries_backoff_then_tcp() {
        let mut s = Schedule::new(7, cfg());
        s.skip_present(6);
        let mut out = Vec::new();
        s.next_requests(0, 10, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3], "window of 4");
        s.on_arrived(0, 50);
        s.next_requests(60, 10, &mut out);
        assert_eq!(out, vec![4], "a window slot freed, nothing expired yet");
        // srtt 50 → timeout 200 for attempt 0: pages 1..3 (sent at 0) expire at 200.
        s.next_requests(200, 10, &mut out);
        assert_eq!(out, vec![1, 2, 3], "retries");
        s.on_arrived(1, 210);
        // Attempt 1 waits twice as long.
        s.next_requests(399, 10, &mut out);
        assert!(!out.contains(&2));
        let mut later = 100_000;
        for _ in 0..4 {
            s.next_requests(later, 10, &mut out);
            later *= 2;
        }
        let mut tcp = Vec::new();
        s.take_tcp(10, usize::MAX, later, &mut tcp);
        assert!(tcp.contains(&2) && tcp.contains(&3), "{tcp:?}");
        for i in tcp {
            s.on_tcp_done(i);
        }
        let c = s.counts();
        assert_eq!(
            (c.via_udp_first, c.via_udp_retry, c.skipped_present),
            (1, 1, 1)
        );
        assert!(s.done() >= 5);
    }

    #[test]
    fn window_grows_with_arrivals_and_halves_on_timeouts() {
        let config = ScheduleConfig {
            window_pages: 1000,
            min_window_pages: 10,
            ..cfg()
        };
        let mut s = Schedule::new(10_000, config);
        let mut out = Vec::new();
        s.next_requests(0, 10_000, &mut out);
        assert_eq!(out.len(), 10);
        for i in out.clone() {
            s.on_arrived(i, 5);
        }
        s.next_requests(6, 10_000, &mut out);
        assert_eq!(out.len(), 20, "doubled after a round trip of arrivals");
        let grown = s.window;
        // All 20 time out at once: the window halves once for the burst, not 20 times.
        s.next_requests(1_000, 10_000, &mut out);
        assert_eq!(s.window, grown / 2.0);
    }

    #[test]
    fn a_limit_caps_new_requests_but_not_retries_and_lifts() {
        let config = ScheduleConfig {
            window_pages: 100,
            min_window_pages: 50,
            ..cfg()
        };
        let mut s = Schedule::new(1_000, config);
        s.limit_in_flight(8);
        let mut out = Vec::new();
        s.next_requests(0, 1_000, &mut out);
        assert_eq!(
            out,
            (0..8).collect::<Vec<_>>(),
            "capped below the window of 50"
        );
        s.next_requests(1, 1_000, &mut out);
        assert!(out.is_empty(), "8 in flight: nothing new");
        // Page 7 arrives at 50 (srtt 50: timeouts of 200; the window grows to 51). At 200 the
        // other 7 time out and are requested again although the cap is reached (UDP has not
        // stalled: a page came 150 ago), and page 8 takes 7's place under the cap.
        s.on_arrived(7, 50);
        s.next_requests(200, 1_000, &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 8]);
        assert_eq!(s.counts().retries, 7);
        s.limit_in_flight(usize::MAX);
        s.next_requests(201, 1_000, &mut out);
        // Lifted: up to the window (halved by the timeouts to its floor of 50) in flight.
        assert_eq!(out.len(), 42, "{out:?}");
    }

    #[test]
    fn timed_out_pages_go_to_tcp_while_it_has_room_and_in_the_tail_after_an_arrival_time() {
        let config = ScheduleConfig {
            window_pages: 8,
            min_window_pages: 8,
            ..cfg()
        };
        let mut s = Schedule::new(8, config);
        s.set_tcp_room(2);
        let mut out = Vec::new();
        s.next_requests(0, 100, &mut out);
        assert_eq!(out.len(), 8);
        // srtt 20: the timeout is 80 (4 × srtt); the tail's wait would be 20.
        s.on_arrived(0, 20);
        // 7 in flight, more than TCP's room: no tail, so nothing moves before the timeout.
        s.next_requests(79, 100, &mut out);
        assert!(out.is_empty());
        let mut tcp = Vec::new();
        s.take_tcp(100, usize::MAX, 79, &mut tcp);
        assert!(tcp.is_empty());
        // At the timeout, two go to TCP (its room) and the other five are requested again.
        s.next_requests(80, 100, &mut out);
        s.take_tcp(100, usize::MAX, 80, &mut tcp);
        assert_eq!((tcp.len(), out.len()), (2, 5), "{tcp:?} {out:?}");
        assert_eq!(s.counts().retries, 5);
        for i in tcp.clone() {
            s.on_tcp_done(i);
        }
        // Three of the five arrive (srtt 20 → 15.4); the two left fit in TCP's room: the tail.
        // Waited for an arrival time (15), not the second attempt's timeout (160).
        for &i in &out[..3] {
            s.on_arrived(i, 90);
        }
        s.next_requests(94, 100, &mut out);
        s.take_tcp(100, usize::MAX, 94, &mut tcp);
        assert!(out.is_empty() && tcp.is_empty(), "{out:?} {tcp:?}");
        s.next_requests(101, 100, &mut out);
        s.take_tcp(100, usize::MAX, 101, &mut tcp);
        assert!(out.is_empty());
        assert_eq!(tcp.len(), 2, "{tcp:?}");
        for i in tcp {
            s.on_tcp_done(i);
        }
        assert!(s.is_complete());
        let c = s.counts();
        assert_eq!((c.via_udp_first, c.via_udp_retry, c.via_tcp), (1, 3, 4));
    }

    /// A run of 20 pages with room for 8 in TCP's batch: the window's pages requested at 0,
    /// page 0 arrived at 30 (srtt 30: timeouts of 120). Returns the schedule and the pages
    /// requested.
    fn first_arrival_at_30(config: ScheduleConfig) -> (Schedule, Vec<usize>) {
        let mut s = Schedule::new(20, config);
        s.set_tcp_room(8);
        let mut out = Vec::new();
        s.next_requests(0, 100, &mut out);
        s.on_arrived(0, 30);
        (s, out)
    }

    #[test]
    fn when_nothing_arrives_for_a_first_timeout_tcp_takes_the_pages_not_requested_yet() {
        let config = ScheduleConfig {
            window_pages: 4,
            min_window_pages: 4,
            ..cfg()
        };
        let (mut s, mut out) = first_arrival_at_30(config);
        let mut tcp = Vec::new();
        assert_eq!(out, [0, 1, 2, 3]);
        // The window takes one more page.
        s.next_requests(30, 100, &mut out);
        assert_eq!(out, [4]);
        // Nothing more arrives. Until a first timeout after the last arrival, no stall.
        assert!(!s.stalled(149));
        s.take_tcp(100, usize::MAX, 149, &mut tcp);
        assert!(tcp.is_empty());
        // At 150 every page in flight has timed out, and UDP has stalled: they go to TCP, UDP
        // gets a probe's worth of new pages (the window is 4), and TCP takes the next ones.
        s.next_requests(150, 100, &mut out);
        assert!(s.stalled(150));
        assert_eq!(out, [5, 6, 7, 8], "{out:?}");
        s.take_tcp(8, usize::MAX, 150, &mut tcp);
        assert_eq!(tcp, [1, 2, 3, 4, 9, 10, 11, 12]);
        // Only as many new pages as granted (the prewarm's pacing).
        s.take_tcp(8, 2, 150, &mut tcp);
        assert_eq!(tcp, [13, 14]);
        // A probe page arriving ends the stall: new pages go to UDP again, none to TCP.
        s.on_arrived(5, 151);
        assert!(!s.stalled(151));
        s.take_tcp(8, usize::MAX, 151, &mut tcp);
        assert!(tcp.is_empty());
    }

    #[test]
    fn a_stall_waits_for_the_floor_however_short_the_timeout() {
        let config = ScheduleConfig {
            min_stall_ns: 1_000,
            ..cfg()
        };
        let (mut s, mut out) = first_arrival_at_30(config);
        let mut tcp = Vec::new();
        // Timeouts are 120 after the arrival: the pages in flight time out at 150 and go to
        // TCP, but UDP has not stalled until the floor, 1000 after the arrival.
        s.next_requests(150, 100, &mut out);
        assert!(!s.stalled(150));
        assert!(!s.stalled(1_029));
        s.take_tcp(100, usize::MAX, 1_029, &mut tcp);
        assert_eq!(tcp, [1, 2, 3], "only the timed-out pages");
        assert!(s.stalled(1_030));
        tcp.clear();
        s.take_tcp(100, usize::MAX, 1_030, &mut tcp);
        assert!(
            !tcp.is_empty(),
            "stalled, TCP takes the pages not requested yet"
        );
        assert!(tcp.iter().all(|&i| i > 3), "{tcp:?}");
    }

    #[test]
    fn fail_over_sends_everything_left_to_tcp_and_completes() {
        let mut s = Schedule::new(10, cfg());
        let mut out = Vec::new();
        s.next_requests(0, 3, &mut out);
        s.skip_gone(9);
        s.fail_over_to_tcp();
        let mut tcp = Vec::new();
        s.take_tcp(100, usize::MAX, 0, &mut tcp);
        assert_eq!(tcp.len(), 9);
        for i in tcp {
            s.on_tcp_done(i);
        }
        assert!(s.is_complete());
        assert_eq!(s.counts().via_tcp, 9);
        assert_eq!(s.counts().skipped_gone, 1);
        assert_eq!(s.in_flight(), 0);
    }
}
