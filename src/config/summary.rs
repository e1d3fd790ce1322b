//! The one-screen summary `tether check` prints for a valid configuration.

use std::fmt::Write;
use std::time::Duration;

use super::Config;

pub fn summary(c: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "listeners:");
    for l in &c.listeners {
        let trusted: Vec<String> = l.trusted_proxies.iter().map(|n| n.to_string()).collect();
        let kind = match (&l.tls, l.redirect_https) {
            (Some(t), _) => format!("TLS ({})", t.describe),
            (None, Some(port)) => format!("plain, redirects to https port {port}"),
            (None, None) => "plain".to_owned(),
        };
        let _ = writeln!(
            s,
            "  {}  {kind}  trusted proxies: {}",
            l.bind,
            if trusted.is_empty() {
                "none".into()
            } else {
                trusted.join(", ")
            }
        );
    }
    if let Some(a) = &c.admin {
        let token = if a.token.is_some() {
            "token required"
        } else {
            "no token"
        };
        let _ = writeln!(s, "admin:\n  {}  ({token})", a.bind);
    }
    let _ = writeln!(s, "routes:");
    for r in &c.routes {
        let host = r.host.as_ref().map_or("*".to_owned(), |h| h.to_string());
        let sources: Vec<String> = r.principal.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            s,
            "  {host} {} -> {}  principal: [{}] else {}  idle: {}{}",
            r.path,
            c.upstreams[r.upstream].name,
            sources.join(", "),
            r.fallback,
            r.idle_timeout.map_or("off".to_owned(), human),
            if r.follow_socket {
                "  follow socket"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(s, "upstreams:");
    for u in &c.upstreams {
        let _ = writeln!(
            s,
            "  {}  timeouts: connect {}, upgrade {}, response {}, keep-alive {}",
            u.name,
            human(u.connect_timeout),
            human(u.upgrade_timeout),
            human(u.response_timeout),
            human(u.keepalive_timeout)
        );
        let h = &u.health;
        let probe = match &h.probe {
            super::Probe::Tcp => "TCP connect".to_owned(),
            super::Probe::Http { path, .. } => format!("GET {path}"),
        };
        let t = &h.thresholds;
        let _ = writeln!(
            s,
            "    health: {probe} every {}, timeout {}, rise {}, fall {}, down after {} live failure(s) in {}",
            human(h.interval),
            human(h.timeout),
            t.rise,
            t.fall,
            t.passive_fails,
            human(t.passive_window)
        );
        let rebalance = match u.rebalance {
            Some(r) => format!("drain after {} at {}/s", human(r.hold), r.rate),
            None => "off".to_owned(),
        };
        let load = u
            .balance_factor
            .map_or("off".to_owned(), |c| format!("c = {c}"));
        let _ = writeln!(s, "    rebalance: {rebalance}; bounded load: {load}");
        for (b, share) in u.backends.iter().zip(u.table().shares()) {
            let _ = writeln!(
                s,
                "    {:<24} {:<22} weight {:<3} share {:5.1}%",
                b.id,
                b.addr,
                b.weight,
                share * 100.0
            );
        }
    }
    let warnings = c.warnings();
    if !warnings.is_empty() {
        let _ = writeln!(s, "warnings:");
        for w in warnings {
            let _ = writeln!(s, "  {w}");
        }
    }
    s
}

/// `1h`, `5m`, `10s`, `250ms`: the largest unit that divides the duration.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humane_durations() {
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }
}
