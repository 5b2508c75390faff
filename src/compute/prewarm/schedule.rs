//! Prewarm's request schedule, sans-IO: which pages to request by UDP now, which to re-request
//! (adaptive timeout with backoff), and which to hand to TCP. Time is passed in.

use std::collections::VecDeque;

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

    /// The timeout of attempt `attempt` (0-based).
    pub fn timeout_ns(&self, attempt: u32) -> u64 {
        let base = self
            .srtt_ns
            .map_or(self.config.initial_timeout_ns as f64, |s| 4.0 * s);
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

    /// Fills `out` with up to `max` pages to request now: expired requests first (retries),
    /// then new pages, within the window. Pages out of UDP attempts go to the TCP queue.
    pub fn next_requests(&mut self, now_ns: u64, max: usize, out: &mut Vec<usize>) {
        out.clear();
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
            if now_ns < at_ns + self.timeout_ns(attempt) {
                break;
            }
            self.outstanding.pop_front();
            let rtt = self
                .srtt_ns
                .unwrap_or(self.config.initial_timeout_ns as f64) as u64;
            if now_ns.saturating_sub(self.last_cut_ns) >= rtt {
                self.window = (self.window / 2.0).max(self.config.min_window_pages as f64);
                self.last_cut_ns = now_ns;
            }
            if attempt + 1 >= self.config.max_udp_attempts {
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
        while out.len() < max
            && self.in_flight < (self.window as usize).min(self.limit)
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
            self.counts.requested += 1;
            out.push(i);
        }
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

    /// Up to `max` pages to fetch over TCP now.
    pub fn take_tcp(&mut self, max: usize, out: &mut Vec<usize>) {
        out.clear();
        while out.len() < max {
            match self.tcp_queue.pop_front() {
                Some(i) if self.state[i] == State::Tcp => out.push(i),
                Some(_) => {}
                None => break,
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
        s.take_tcp(10, &mut tcp);
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
        // The first timeout (100) passes: all 8 are re-requested although the cap is reached.
        s.next_requests(100, 1_000, &mut out);
        assert_eq!(out.len(), 8, "{out:?}");
        assert_eq!(s.counts().retries, 8);
        s.limit_in_flight(usize::MAX);
        s.next_requests(101, 1_000, &mut out);
        // Lifted: up to the window (50, its floor) in flight.
        assert_eq!(out.len(), 42, "{out:?}");
    }

    #[test]
    fn fail_over_sends_everything_left_to_tcp_and_completes() {
        let mut s = Schedule::new(10, cfg());
        let mut out = Vec::new();
        s.next_requests(0, 3, &mut out);
        s.skip_gone(9);
        s.fail_over_to_tcp();
        let mut tcp = Vec::new();
        s.take_tcp(100, &mut tcp);
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
