//! What a target costs, read from `/proc`: CPU time with nanosecond resolution (the sum
//! of `schedstat` over every thread of every process of the target), how it splits
//! between user space and the kernel (the `utime` and `stime` clock ticks of `stat`),
//! and resident memory (`VmRSS`, summed).

use std::fs;

/// A process and its children (nginx's master and workers).
pub fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    out.extend(
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .flat_map(family),
    );
    out
}

/// CPU time used so far by `pids` and all their threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// In nanoseconds (`schedstat`).
    pub ns: u64,
    /// Clock ticks in user space and in the kernel (`stat`): coarse, but over a
    /// window of seconds their ratio splits `ns`.
    pub user_ticks: u64,
    pub sys_ticks: u64,
}

impl Cpu {
    /// What was used between `self` and the later reading `now`: (ns, of which in the
    /// kernel).
    pub fn since(self, now: Cpu) -> (u64, u64) {
        // Saturating: a thread that exited in between takes its time out of the sum.
        let ns = now.ns.saturating_sub(self.ns);
        let user = now.user_ticks.saturating_sub(self.user_ticks);
        let sys = now.sys_ticks.saturating_sub(self.sys_ticks);
        let kernel = (ns as f64 * sys as f64 / (user + sys).max(1) as f64) as u64;
        (ns, kernel)
    }
}

pub fn cpu(pids: &[u32]) -> Cpu {
    let mut total = Cpu::default();
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let read = |name| fs::read_to_string(task.path().join(name)).unwrap_or_default();
            let schedstat = read("schedstat");
            total.ns += first_number(schedstat.split_whitespace());
            // `stat` fields after the parenthesised command name start at field 3;
            // `utime` and `stime` are fields 14 and 15.
            let stat = read("stat");
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            total.user_ticks += first_number(rest.split_whitespace().skip(11));
            total.sys_ticks += first_number(rest.split_whitespace().skip(12));
        }
    }
    total
}

fn first_number<'a>(mut words: impl Iterator<Item = &'a str>) -> u64 {
    words.next().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Resident memory of `pids`, in KiB.
pub fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map_or(0, |l| first_number(l.split_whitespace().skip(1)))
        })
        .sum()
}
