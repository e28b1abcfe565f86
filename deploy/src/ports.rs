//! Ports for nodes started on free ports (tests, benchmarks).
//!
//! A port that was merely free a moment ago is a race: until the node binds it, another
//! process can take it, and a node of one test cluster could then end up talking to another
//! test's cluster. So a port is picked outside the kernel's ephemeral range (where `bind(0)`,
//! as the delay links use, never lands) and reserved with an exclusive lock file held until
//! this process exits. Concurrent launchers on the machine therefore never pick the same one.

use rand::Rng;
use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// Lock files of the ports this process reserved; the locks go when the process does.
static RESERVED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Ports below the ephemeral range that are picked from.
const LOWEST: u16 = 10_000;

/// A loopback port reserved for this process.
pub fn free_port() -> std::io::Result<u16> {
    let (lo, hi) = ephemeral_range();
    let dir = std::env::temp_dir().join("kv-ports");
    std::fs::create_dir_all(&dir)?;
    for _ in 0..1000 {
        let port = if lo > LOWEST + 1000 {
            rand::thread_rng().gen_range(LOWEST..lo)
        } else {
            rand::thread_rng().gen_range(hi.saturating_add(1)..=u16::MAX)
        };
        let Ok(file) = File::options().create(true).truncate(false).write(true).open(dir.join(port.to_string())) else {
            continue;
        };
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            RESERVED.lock().unwrap_or_else(|p| p.into_inner()).push(file);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no free loopback port left to reserve"))
}

/// The kernel's ephemeral port range (Linux's default when unreadable).
fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    match (parts.next(), parts.next()) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (32_768, 60_999),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let (lo, hi) = ephemeral_range();
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "no port is handed out twice");
        for p in ports {
            assert!(!(lo..=hi).contains(&p), "{p} is outside {lo}-{hi}");
            TcpListener::bind(("127.0.0.1", p)).expect("a reserved port is free to bind");
        }
    }
}
