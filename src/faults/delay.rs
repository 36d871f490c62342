//! kemu's userspace delay line, for kernels without netem: packets leaving a link are handed
//! to it on an NFQUEUE (the `nfq` crate), held until their release time and then accepted.
//!
//! [`DelayLine`] is the pure part (what to do with each packet, and when), driven by a seeded
//! RNG so tests replay it; [`run`] is the thin loop around the kernel queue. The loop blocks
//! in `recv` while nothing is held, and otherwise polls the queue without blocking and sleeps
//! until the next release (at most [`POLL`]), with the timer slack at 1 µs so sleeps end on
//! time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::spec::{Delay, Percent};

/// The longest sleep while packets are held: a packet that arrives meanwhile waits at most
/// this long in the kernel before the delay line sees it.
pub const POLL: Duration = Duration::from_micros(100);

/// What the delay line does to a link's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params {
    pub delay: Option<Delay>,
    pub duplicate: Option<Percent>,
    /// Sent at once, without the delay (so they overtake the others), as netem's `reorder`.
    pub reorder: Option<Percent>,
}

/// The fate of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub release: Instant,
    pub duplicate: bool,
}

/// Packets held until their release time, in release order (arrival order for equal times).
pub struct DelayLine<T> {
    params: Params,
    rng: ChaCha8Rng,
    heap: BinaryHeap<Reverse<(Instant, u64, Slot<T>)>>,
    seq: u64,
}

/// A held packet; ordered by (release, seq) only.
struct Slot<T>(T);

impl<T> PartialEq for Slot<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

fn chance(rng: &mut ChaCha8Rng, p: Option<Percent>) -> bool {
    p.is_some_and(|p| rng.random_range(0..Percent::SCALE) < p.0)
}

impl<T> DelayLine<T> {
    pub fn new(params: Params, seed: u64) -> DelayLine<T> {
        DelayLine {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Decide the fate of a packet that arrived at `now`.
    pub fn decide(&mut self, now: Instant) -> Decision {
        let duplicate = chance(&mut self.rng, self.params.duplicate);
        let reorder = chance(&mut self.rng, self.params.reorder);
        let wait = match self.params.delay {
            Some(_) if reorder => Duration::ZERO,
            Some(d) if d.jitter.is_zero() => d.base,
            Some(d) => {
                let j = d.jitter.as_nanos() as i64;
                let offset = self.rng.random_range(-j..=j);
                let nanos = (d.base.as_nanos() as i64 + offset).max(0);
                Duration::from_nanos(nanos as u64)
            }
            None => Duration::ZERO,
        };
        Decision {
            release: now + wait,
            duplicate,
        }
    }

    /// Hold `packet` until `release`.
    pub fn hold(&mut self, release: Instant, packet: T) {
        self.seq += 1;
        self.heap.push(Reverse((release, self.seq, Slot(packet))));
    }

    /// The earliest release time of the held packets.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next packet due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.next_release()? <= now {
            self.heap.pop().map(|Reverse((_, _, Slot(p)))| p)
        } else {
            None
        }
    }

    /// Every held packet, in release order (on shutdown: let them all go).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(Reverse((_, _, Slot(p)))) = self.heap.pop() {
            out.push(p);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Set by SIGTERM/SIGINT: release every held packet and exit.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// A held packet: the kernel's message, and a copy to send again when it is duplicated.
struct Held {
    msg: nfq::Message,
    copy: Option<Vec<u8>>,
}

/// Bind queue `num`, print `ready` on stdout, and delay its packets until SIGTERM.
pub fn run(num: u16, params: Params, seed: u64) -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    // No SA_RESTART: a blocked `recv` returns EINTR and the loop sees STOP.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }?;
    }
    // Sleeps end within a microsecond of their deadline instead of the default 50 µs.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };

    let mut queue = nfq::Queue::open()?;
    queue.bind(num)?;
    // Metadata is enough to delay a packet; duplicates need the whole packet.
    let copy = if params.duplicate.is_some() {
        0xffff
    } else {
        0
    };
    queue.set_copy_range(num, copy)?;
    queue.set_queue_max_len(num, 100_000)?;
    queue.set_fail_open(num, true)?;
    let dup_socket = match params.duplicate {
        Some(_) => Some(raw_socket()?),
        None => None,
    };
    println!("ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let mut line: DelayLine<Held> = DelayLine::new(params, seed);
    while !STOP.load(Ordering::Relaxed) {
        queue.set_nonblocking(!line.is_empty());
        match queue.recv() {
            Ok(msg) => {
                let decision = line.decide(Instant::now());
                let copy = decision.duplicate.then(|| msg.get_payload().to_vec());
                line.hold(decision.release, Held { msg, copy });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let now = Instant::now();
                if let Some(next) = line.next_release()
                    && next > now
                {
                    std::thread::sleep((next - now).min(POLL));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        while let Some(held) = line.pop_due(now) {
            release(&mut queue, held, dup_socket.as_ref())?;
        }
    }
    for held in line.drain() {
        release(&mut queue, held, dup_socket.as_ref())?;
    }
    Ok(())
}

fn release(
    queue: &mut nfq::Queue,
    held: Held,
    dup: Option<&std::os::fd::OwnedFd>,
) -> anyhow::Result<()> {
    let mut msg = held.msg;
    msg.set_verdict(nfq::Verdict::Accept);
    queue.verdict(msg)?;
    if let (Some(copy), Some(sock)) = (held.copy, dup) {
        send_raw(sock, &copy);
    }
    Ok(())
}

/// A raw IPv4 socket (the packets carry their own header) whose packets bear
/// [`super::render::ENGINE_MARK`], so the NFQUEUE rule lets them pass.
fn raw_socket() -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls; the fd is owned from here on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mark: u32 = super::render::ENGINE_MARK;
        let rc = libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            4,
        );
        anyhow::ensure!(rc == 0, "SO_MARK: {}", std::io::Error::last_os_error());
        Ok(fd)
    }
}

/// Send an IPv4 packet again as it is (a duplicate); failures are only logged.
fn send_raw(sock: &std::os::fd::OwnedFd, packet: &[u8]) {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return;
    }
    let dst = [packet[16], packet[17], packet[18], packet[19]];
    // SAFETY: sendto with a stack sockaddr_in and a borrowed buffer.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst);
        let rc = libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc < 0 {
            tracing::debug!("send a duplicate: {}", std::io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::spec::{parse_delay, parse_percent};

    #[test]
    fn packets_leave_in_release_order_after_their_delay() {
        let params = Params {
            delay: Some(parse_delay("10ms±5ms").unwrap()),
            ..Default::default()
        };
        let mut line = DelayLine::new(params, 7);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 10);
            let d = line.decide(now);
            let wait = d.release - now;
            assert!(
                wait >= Duration::from_millis(5) && wait <= Duration::from_millis(15),
                "{wait:?}"
            );
            assert!(!d.duplicate);
            line.hold(d.release, (i, d.release));
        }
        assert!(line.pop_due(t0).is_none(), "nothing is due at once");
        let mut last = t0;
        let mut out = 0;
        while let Some((_, release)) = line.pop_due(t0 + Duration::from_secs(1)) {
            assert!(release >= last);
            last = release;
            out += 1;
        }
        assert_eq!(out, 1000);
    }

    #[test]
    fn duplicate_and_reorder_follow_their_probabilities() {
        let params = Params {
            delay: Some(parse_delay("10ms").unwrap()),
            duplicate: Some(parse_percent("10%").unwrap()),
            reorder: Some(parse_percent("25%").unwrap()),
        };
        let mut line: DelayLine<()> = DelayLine::new(params, 1);
        let now = Instant::now();
        let (mut dups, mut at_once) = (0, 0);
        for _ in 0..100_000 {
            let d = line.decide(now);
            dups += usize::from(d.duplicate);
            at_once += usize::from(d.release == now);
        }
        assert!((9_000..11_000).contains(&dups), "{dups}");
        assert!((24_000..26_000).contains(&at_once), "{at_once}");
    }

    #[test]
    fn equal_release_times_keep_arrival_order() {
        let mut line = DelayLine::new(Params::default(), 0);
        let t = Instant::now();
        for i in 0..10 {
            line.hold(t, i);
        }
        let out: Vec<i32> = std::iter::from_fn(|| line.pop_due(t)).collect();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
    }
}
