//! The serde mirror of the TOML file: exactly the shape a user writes, nothing typed yet.
//!
//! Every table denies unknown keys, so a typo is an error with a position instead of a
//! silently ignored setting. Values that the typed layer (`config/mod.rs`) still has to
//! interpret keep their byte span (`Spanned`) so that its errors can point at them.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub upstream: BTreeMap<Spanned<String>, RawUpstream>,
    pub drain_timeout: Option<Spanned<String>>,
    pub removal_grace: Option<Spanned<String>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub log: Option<RawLog>,
    pub workers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: Spanned<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub header_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    /// `true` (port 443) or an https port: answer every request with a 308 to https.
    pub redirect_https: Option<Spanned<toml::Value>>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
    pub hsts: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub sni: Vec<RawSni>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSni {
    pub server_names: Vec<Spanned<String>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Spanned<String>,
    pub host: Option<Spanned<Hosts>>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub principal: Vec<Spanned<String>>,
    pub fallback: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub follow_socket: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub backends: Spanned<Vec<Spanned<RawBackend>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub upgrade_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub keepalive_timeout: Option<Spanned<String>>,
    pub rebalance: Option<Spanned<String>>,
    pub rebalance_hold: Option<Spanned<String>>,
    pub rebalance_rate: Option<Spanned<i64>>,
    pub balance_factor: Option<Spanned<f64>>,
    pub health: Option<RawHealth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub start: Option<Spanned<String>>,
    pub passive_fails: Option<Spanned<i64>>,
    pub passive_window: Option<Spanned<String>>,
}

/// A route's `host`: one name or a list of them (nginx's `server_name a b;`).
#[derive(Debug)]
pub struct Hosts(pub Vec<String>);

struct HostsVisitor;

impl<'de> Visitor<'de> for HostsVisitor {
    type Value = Hosts;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"a host name or a list of them, e.g. "chat.example.com" or ["a.example.com", "*.b.example.com"]"#)
    }

    fn visit_str<E: de::Error>(self, host: &str) -> Result<Hosts, E> {
        Ok(Hosts(vec![host.to_owned()]))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Hosts, A::Error> {
        let mut hosts = Vec::new();
        while let Some(h) = seq.next_element::<String>()? {
            hosts.push(h);
        }
        Ok(Hosts(hosts))
    }
}

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(HostsVisitor)
    }
}

/// A backend is either `"host:port"` or `{ addr = "host:port", name = "a", weight = 2 }`.
#[derive(Debug)]
pub struct RawBackend {
    pub addr: String,
    pub name: Option<String>,
    pub weight: Option<i64>,
}

/// Written by hand rather than `#[serde(untagged)]`: untagged enums swallow the inner
/// error ("data did not match any variant"), and we want `unknown field `wieght``.
struct BackendVisitor;

impl<'de> Visitor<'de> for BackendVisitor {
    type Value = RawBackend;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#""host:port" or { addr = "host:port", name = "...", weight = N }"#)
    }

    fn visit_str<E: de::Error>(self, addr: &str) -> Result<RawBackend, E> {
        Ok(RawBackend {
            addr: addr.to_owned(),
            name: None,
            weight: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            addr: String,
            name: Option<String>,
            weight: Option<i64>,
        }
        let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(RawBackend {
            addr: t.addr,
            name: t.name,
            weight: t.weight,
        })
    }
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BackendVisitor)
    }
}
