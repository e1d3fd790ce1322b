//! What a target costs, read from `/proc`: CPU time with nanosecond resolution (the sum
//! of `schedstat` over every thread of every process of the target) and resident
//! memory (`VmRSS`, summed).

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

/// CPU time used so far by `pids` and all their threads, in nanoseconds.
pub fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let stat = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Resident memory of `pids`, in KiB.
pub fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .sum()
}
