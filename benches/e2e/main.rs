//! How does tether compare with nginx and HAProxy per message, per idle connection, per
//! connection and per request, in throughput and in added latency — measured side by
//! side in one run?
//!
//! `cargo bench --bench e2e` (nginx and HAProxy from `apt-get install nginx haproxy`;
//! a missing one is skipped with a message). Writes `benches/results/e2e.md` and
//! `benches/results/e2e.svg`. `TETHER_BENCH_ROUNDS` sets the rounds (default 3);
//! `TETHER_BENCH_TARGETS=tether,nginx` and `TETHER_BENCH_FIGURES=message,request` run a
//! subset (figures: message, memory, connection, request, throughput, latency), e.g.
//! to profile one scenario; a partial run does not overwrite the results files.
//!
//! Each proxy runs as its own process pinned to core 0 with one worker; this process
//! (load generator and three echo backends, one thread) is pinned to core 1. Within
//! each scenario the targets take turns, in a different order each round, and the
//! table reports medians. Costs come from the proxy's own CPU time (`schedstat`) and
//! RSS, so they hold even where the load generator is the bottleneck.

mod backend;
mod load;
mod measure;
mod report;
mod targets;

use std::path::Path;

use report::{Figure, Results};
use targets::{Kind, Target};

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes benches; this one only runs on purpose.
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    assert!(
        cores.len() >= 2,
        "the benchmark needs two cores (proxy on 0, load on 1)"
    );
    core_affinity::set_for_current(cores[1]);
    let rounds: usize = std::env::var("TETHER_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&rt, run(rounds));
    let partial = std::env::var("TETHER_BENCH_TARGETS").is_ok()
        || std::env::var("TETHER_BENCH_FIGURES").is_ok();
    let dir = if partial {
        std::env::temp_dir().join("tether-bench")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results")
    };
    let md = report::write(&results, rounds, &machine(cores.len()), &dir);
    println!("\n{md}\nwritten to {}", dir.display());
}

async fn run(rounds: usize) -> Results {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(backend::start().await);
    }
    let wanted = |var: &str, name: &str| {
        std::env::var(var).map_or(true, |v| v.split(',').any(|w| w.eq_ignore_ascii_case(name)))
    };
    let mut targets: Vec<Target> = [Kind::Direct, Kind::Tether, Kind::Nginx, Kind::Haproxy]
        .into_iter()
        .filter(|k| *k == Kind::Direct || wanted("TETHER_BENCH_TARGETS", k.name()))
        .filter_map(|k| Target::start(k, &backends))
        .collect();
    let figure = |name: &str| wanted("TETHER_BENCH_FIGURES", name);
    let mut results = Results::new();
    let mut record = |f: Figure, k: Kind, v: f64| {
        println!("  {:<8} {f:?}: {v:.2}", k.name());
        results.entry((f, k)).or_default().push(v);
    };
    for round in 0..rounds {
        println!("round {} of {rounds}", round + 1);
        let turn: Vec<usize> = (0..targets.len())
            .map(|i| (i + round) % targets.len())
            .collect();
        // Memory first, each target freshly started: a process that already held 5,000
        // tunnels reuses that heap and would look cheaper than it is.
        for &i in turn.iter().filter(|_| figure("memory")) {
            let kind = targets[i].kind;
            if kind == Kind::Direct {
                continue;
            }
            targets[i] = Target::start(kind, &backends).expect("it started before");
            record(
                Figure::IdleMemory,
                kind,
                load::idle_memory(&targets[i], 5000).await,
            );
        }
        let order: Vec<&Target> = turn.iter().map(|&i| &targets[i]).collect();
        let proxies = || order.iter().copied().filter(|t| t.kind != Kind::Direct);
        // CPU figures in µs, each with the part of it spent in the kernel.
        for t in proxies().filter(|_| figure("message")) {
            let cost = load::message_cpu(t, 100, 20_000).await;
            record(Figure::MessageCpu, t.kind, cost.total / 1e3);
            record(Figure::MessageKernel, t.kind, cost.kernel / 1e3);
        }
        for t in proxies().filter(|_| figure("connection")) {
            let cost = load::connection_cpu(t, 50).await;
            record(Figure::ConnectionCpu, t.kind, cost.total / 1e3);
            record(Figure::ConnectionKernel, t.kind, cost.kernel / 1e3);
        }
        for t in proxies().filter(|_| figure("request")) {
            let cost = load::request_cpu(t, 50).await;
            record(Figure::RequestCpu, t.kind, cost.total / 1e3);
            record(Figure::RequestKernel, t.kind, cost.kernel / 1e3);
        }
        for t in order.iter().filter(|_| figure("throughput")) {
            record(
                Figure::Throughput,
                t.kind,
                load::throughput(t, 100, 16, 16 * 1024).await,
            );
        }
        if !figure("latency") {
            continue;
        }
        // Round trips: every target in the same round, under load (the 5k msg/s
        // over 100 connections) and as a single ping-pong (what one hop costs). The
        // direct path is the baseline the proxies add to.
        for (conns, rate, p50_fig, p99_fig) in [
            (100, 5_000, Figure::LoadedP50, Figure::LoadedP99),
            (1, 1_000, Figure::PingP50, Figure::PingP99),
        ] {
            for t in &order {
                let (p50, p99) = load::latency(t, conns, rate).await;
                println!(
                    "  {:<8} {conns} conns at {rate}/s: round trip p50 {p50:.0} µs, p99 {p99:.0} µs",
                    t.kind.name()
                );
                record(p50_fig, t.kind, p50);
                record(p99_fig, t.kind, p99);
            }
        }
    }
    results
}

/// The machine, for the record.
fn machine(cores: usize) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                String::from_utf8_lossy(if o.stdout.is_empty() {
                    &o.stderr
                } else {
                    &o.stdout
                })
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "Machine: {cpu}, {} cores, Linux {}. {}; {}.",
        cores,
        kernel.trim(),
        version("nginx", "-v"),
        version("haproxy", "-v"),
    )
}
