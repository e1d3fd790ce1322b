//! The results: medians per figure and target, the ratio to the better anchor (nginx,
//! HAProxy) or to direct, the target for each, as a Markdown table and an SVG
//! chart (plotters) that README shows.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

use plotters::prelude::*;

use crate::targets::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Figure {
    MessageCpu,
    IdleMemory,
    ConnectionCpu,
    RequestCpu,
    Throughput,
    LoadedP50,
    LoadedP99,
    PingP50,
    PingP99,
    /// The kernel's part of the CPU figures.
    MessageKernel,
    ConnectionKernel,
    RequestKernel,
}

/// How a figure is judged.
struct Spec {
    title: &'static str,
    /// The chart panel's caption (the title's parenthesis is too long for a panel).
    short: &'static str,
    unit: &'static str,
    /// `(bound, against_direct)`: tether ÷ best anchor must be at most `bound`, or for
    /// throughput tether ÷ direct at least `bound`. `None` for the kernel parts, which
    /// explain a figure rather than judge it.
    target: Option<(f64, bool)>,
    note: &'static str,
}

impl Figure {
    pub const ALL: [Figure; 9] = [
        Figure::MessageCpu,
        Figure::IdleMemory,
        Figure::ConnectionCpu,
        Figure::RequestCpu,
        Figure::Throughput,
        Figure::LoadedP50,
        Figure::LoadedP99,
        Figure::PingP50,
        Figure::PingP99,
    ];

    /// Each CPU figure and its kernel part.
    pub const KERNEL: [(Figure, Figure); 3] = [
        (Figure::MessageCpu, Figure::MessageKernel),
        (Figure::ConnectionCpu, Figure::ConnectionKernel),
        (Figure::RequestCpu, Figure::RequestKernel),
    ];

    /// The main table's figures, then the kernel parts.
    fn every() -> impl Iterator<Item = Figure> {
        Figure::ALL
            .into_iter()
            .chain(Figure::KERNEL.map(|(_, kernel)| kernel))
    }

    /// Whether the direct path is measured and shown for this figure. Latency figures
    /// are absolute round trips: the direct path shares the round, so comparing proxies'
    /// round trips is comparing the latency they add, without the negative "added"
    /// values that load-generator queueing on the direct path produces.
    fn has_direct(self) -> bool {
        matches!(
            self,
            Figure::Throughput
                | Figure::LoadedP50
                | Figure::LoadedP99
                | Figure::PingP50
                | Figure::PingP99
        )
    }

    fn spec(self) -> Spec {
        match self {
            Figure::MessageCpu => Spec {
                title: "proxy CPU per echoed 64 B message (100 conns, 20k msg/s)",
                short: "proxy CPU per echoed 64 B message",
                unit: "µs",
                target: Some((0.8, false)),
                note: "≤ 0.8× better anchor",
            },
            Figure::IdleMemory => Spec {
                title: "proxy RSS per idle WebSocket (5,000 idle)",
                short: "proxy RSS per idle WebSocket",
                unit: "KiB",
                target: Some((0.8, false)),
                note: "≤ 0.8× better anchor",
            },
            Figure::ConnectionCpu => Spec {
                title: "proxy CPU per WebSocket connection (open, echo, close; 50 concurrent)",
                short: "proxy CPU per WebSocket connection",
                unit: "µs",
                target: Some((0.8, false)),
                note: "≤ 0.8× better anchor",
            },
            Figure::RequestCpu => Spec {
                title: "proxy CPU per HTTP request (keep-alive, 50 conns)",
                short: "proxy CPU per HTTP request",
                unit: "µs",
                target: Some((0.9, false)),
                note: "≤ 0.9× better anchor",
            },
            Figure::Throughput => Spec {
                title: "16 KiB messages echoed (100 conns × 16 in flight)",
                short: "16 KiB messages echoed",
                unit: "MB/s",
                target: Some((0.9, true)),
                note: "≥ 0.9× direct",
            },
            Figure::LoadedP50 => Spec {
                title: "round trip p50 (100 conns, 5k msg/s)",
                short: "round trip p50 at 5k msg/s",
                unit: "µs",
                target: Some((1.0, false)),
                note: "≤ better anchor",
            },
            Figure::LoadedP99 => Spec {
                title: "round trip p99 (100 conns, 5k msg/s)",
                short: "round trip p99 at 5k msg/s",
                unit: "µs",
                target: Some((1.0, false)),
                note: "≤ better anchor",
            },
            Figure::PingP50 => Spec {
                title: "round trip p50 (1 conn ping-pong)",
                short: "ping-pong round trip p50",
                unit: "µs",
                target: Some((1.0, false)),
                note: "≤ better anchor",
            },
            Figure::PingP99 => Spec {
                title: "round trip p99 (1 conn ping-pong)",
                short: "ping-pong round trip p99",
                unit: "µs",
                target: Some((1.0, false)),
                note: "≤ better anchor",
            },
            Figure::MessageKernel => Spec {
                title: "kernel CPU per echoed 64 B message",
                short: "kernel part of CPU per message",
                unit: "µs",
                target: None,
                note: "–",
            },
            Figure::ConnectionKernel => Spec {
                title: "kernel CPU per WebSocket connection",
                short: "kernel part of CPU per connection",
                unit: "µs",
                target: None,
                note: "–",
            },
            Figure::RequestKernel => Spec {
                title: "kernel CPU per HTTP request",
                short: "kernel part of CPU per request",
                unit: "µs",
                target: None,
                note: "–",
            },
        }
    }
}

pub type Results = HashMap<(Figure, Kind), Vec<f64>>;

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

const KINDS: [Kind; 4] = [Kind::Direct, Kind::Tether, Kind::Nginx, Kind::Haproxy];

/// The ratio that judges `fig`, and whether it meets its target.
fn verdict(fig: Figure, m: &HashMap<Kind, f64>) -> Option<(f64, bool)> {
    let (bound, against_direct) = fig.spec().target?;
    let tether = *m.get(&Kind::Tether)?;
    if against_direct {
        let r = tether / m.get(&Kind::Direct)?;
        return Some((r, r >= bound));
    }
    let r = tether / best_anchor(m)?;
    Some((r, r <= bound))
}

/// The lower of nginx's and HAProxy's figures.
fn best_anchor(m: &HashMap<Kind, f64>) -> Option<f64> {
    [Kind::Nginx, Kind::Haproxy]
        .iter()
        .filter_map(|k| m.get(k))
        .copied()
        .reduce(f64::min)
}

/// Writes `e2e.md` and `e2e.svg` into `dir`; returns the Markdown.
pub fn write(results: &Results, rounds: usize, machine: &str, dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let medians: HashMap<Figure, HashMap<Kind, f64>> = Figure::every()
        .map(|f| {
            (
                f,
                KINDS
                    .iter()
                    .filter_map(|k| Some((*k, median(results.get(&(f, *k))?)?)))
                    .collect(),
            )
        })
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "Medians of {rounds} interleaved rounds. {machine}\n");
    let _ = writeln!(
        md,
        "| figure | direct | tether | nginx | HAProxy | tether ratio | target | met |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for f in Figure::ALL {
        let spec = f.spec();
        let m = &medians[&f];
        let cell = |k: Kind| {
            m.get(&k)
                .map_or("–".to_owned(), |v| format!("{v:.1} {}", spec.unit))
        };
        let (ratio, met) = match verdict(f, m) {
            Some((r, ok)) => (format!("{r:.2}×"), if ok { "yes" } else { "**no**" }),
            None => ("–".to_owned(), "–"),
        };
        let direct = if f.has_direct() {
            cell(Kind::Direct)
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            md,
            "| {} | {direct} | {} | {} | {} | {ratio} | {} | {met} |",
            spec.title,
            cell(Kind::Tether),
            cell(Kind::Nginx),
            cell(Kind::Haproxy),
            spec.note
        );
    }
    // Where the CPU goes: a target below what the anchors' kernel time alone costs
    // cannot be met by making user space cheaper.
    let _ = writeln!(
        md,
        "\nOf each CPU figure, the part spent in the kernel (system calls and the \
         loopback network stack: the window's CPU time × `stime` ÷ (`utime` + `stime`)), \
         against the total the target allows tether:\n"
    );
    let _ = writeln!(
        md,
        "| figure | tether | nginx | HAProxy | target for tether's total |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (total, kernel) in Figure::KERNEL {
        let m = &medians[&kernel];
        let cell = |k: Kind| m.get(&k).map_or("–".to_owned(), |v| format!("{v:.1} µs"));
        let allowed = match (total.spec().target, best_anchor(&medians[&total])) {
            (Some((bound, false)), Some(best)) => format!("≤ {:.1} µs", bound * best),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {allowed} |",
            kernel.spec().title,
            cell(Kind::Tether),
            cell(Kind::Nginx),
            cell(Kind::Haproxy),
        );
    }
    // Every round, so the spread behind each median is on record.
    let _ = writeln!(md, "\nEach round, in run order:\n");
    let _ = writeln!(md, "| figure | direct | tether | nginx | HAProxy |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for f in Figure::every() {
        let rounds = |k: Kind| {
            results.get(&(f, k)).map_or("–".to_owned(), |v| {
                v.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
        };
        let _ = writeln!(
            md,
            "| {} ({}) | {} | {} | {} | {} |",
            f.spec().short,
            f.spec().unit,
            rounds(Kind::Direct),
            rounds(Kind::Tether),
            rounds(Kind::Nginx),
            rounds(Kind::Haproxy)
        );
    }
    std::fs::write(dir.join("e2e.md"), &md).unwrap();
    chart(&medians, &dir.join("e2e.svg"));
    md
}

fn chart(medians: &HashMap<Figure, HashMap<Kind, f64>>, path: &Path) {
    let root = SVGBackend::new(path, (1500, 760)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let panels = root.split_evenly((2, 5));
    let colors = [
        RGBColor(150, 150, 150),
        RGBColor(37, 99, 235),
        RGBColor(22, 128, 61),
        RGBColor(190, 60, 45),
    ];
    for (panel, f) in panels.iter().zip(Figure::ALL) {
        let spec = f.spec();
        let m = &medians[&f];
        let kinds: Vec<Kind> = KINDS
            .iter()
            .copied()
            .filter(|k| m.contains_key(k) && (*k != Kind::Direct || f.has_direct()))
            .collect();
        let max = kinds.iter().map(|k| m[k]).fold(0.0, f64::max).max(1e-9) * 1.2;
        let Ok(mut c) = ChartBuilder::on(panel)
            .caption(
                format!("{} ({})", spec.short, spec.unit),
                ("sans-serif", 14),
            )
            .margin(12)
            .x_label_area_size(24)
            .y_label_area_size(52)
            .build_cartesian_2d((0..kinds.len()).into_segmented(), 0f64..max)
        else {
            continue;
        };
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        let _ = c
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => names.get(*i).map_or(String::new(), |s| s.to_string()),
                _ => String::new(),
            })
            .draw();
        let _ = c.draw_series(kinds.iter().enumerate().map(|(i, k)| {
            let color = colors[KINDS.iter().position(|x| x == k).unwrap_or(0)];
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), m[k]),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 10, 10);
            bar
        }));
        let _ = c.draw_series(kinds.iter().enumerate().map(|(i, k)| {
            Text::new(
                format!("{:.1}", m[k]),
                (SegmentValue::CenterOf(i), m[k]),
                ("sans-serif", 12).into_font(),
            )
        }));
    }
    // The eighth panel: what the bars are.
    if let Some(legend) = panels.last() {
        let lines = [
            "Lower is better, except MB/s.",
            "One proxy worker pinned to core 0;",
            "load generator and 3 echo backends",
            "on core 1. Medians of interleaved runs.",
        ];
        for (i, l) in lines.iter().enumerate() {
            let _ = legend.draw(&Text::new(*l, (20, 60 + 22 * i as i32), ("sans-serif", 14)));
        }
    }
    let _ = root.present();
}
