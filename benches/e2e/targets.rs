//! The things being compared: clients straight to the backends ("direct"), and tether,
//! nginx and HAProxy in front of the same three backends. Each proxy runs as its own
//! process pinned to core 0 with one worker, configured as an experienced operator
//! would for WebSockets (upgrade headers, long tunnel timeouts, upstream keep-alive,
//! no access log) and placing by the `u` query value with consistent hashing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::measure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Direct,
    Tether,
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Tether => "tether",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
        }
    }
}

pub struct Target {
    pub kind: Kind,
    /// Where clients connect (for `Direct`, unused: clients pick a backend).
    pub addr: SocketAddr,
    pub backends: Vec<SocketAddr>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Target {
    /// Starts `kind` in front of `backends`; `None` (with a message) if its program is
    /// not installed.
    pub fn start(kind: Kind, backends: &[SocketAddr]) -> Option<Target> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = dir.path().display().to_string();
        let mut cmd = match kind {
            Kind::Direct => {
                return Some(Target {
                    kind,
                    addr,
                    backends: backends.to_vec(),
                    child: None,
                    _dir: dir,
                });
            }
            Kind::Tether => {
                let list: Vec<String> = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{{ addr = \"{b}\", name = \"s{i}\" }}"))
                    .collect();
                let conf = format!(
                    "workers = 1\n[[listener]]\nbind = \"{addr}\"\n[[route]]\npath = \"/\"\nupstream = \"app\"\n\
                     principal = [\"query:u\"]\n[upstream.app]\nbackends = [{}]\n",
                    list.join(", ")
                );
                std::fs::write(dir.path().join("tether.toml"), conf).unwrap();
                let mut c = pinned(env!("CARGO_BIN_EXE_tether"));
                c.args(["run", "--config", &format!("{d}/tether.toml")])
                    .env("RUST_LOG", "warn");
                c
            }
            Kind::Nginx => {
                let program = "/usr/sbin/nginx";
                if !std::path::Path::new(program).exists() {
                    eprintln!("nginx is not installed (apt-get install nginx): skipped");
                    return None;
                }
                let servers: String = backends
                    .iter()
                    .map(|b| format!("    server {b};\n"))
                    .collect();
                let conf = format!(
                    "worker_processes 1;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                     events {{ worker_connections 16000; }}\n\
                     http {{\n  access_log off;\n  keepalive_requests 100000000;\n\
                     client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
                     uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                     map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
                     upstream app {{\n    hash $arg_u consistent;\n{servers}    keepalive 64;\n    keepalive_requests 100000000;\n  }}\n\
                     server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n\
                     proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n\
                     proxy_set_header Host $host:$server_port;\n      proxy_set_header X-Forwarded-For $remote_addr;\n\
                     proxy_read_timeout 3600s;\n      proxy_send_timeout 3600s;\n    }}\n  }}\n}}\n"
                );
                std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
                let mut c = pinned(program);
                c.args([
                    "-p",
                    &d,
                    "-c",
                    &format!("{d}/nginx.conf"),
                    "-g",
                    "daemon off;",
                ]);
                c
            }
            Kind::Haproxy => {
                let program = "/usr/sbin/haproxy";
                if !std::path::Path::new(program).exists() {
                    eprintln!("HAProxy is not installed (apt-get install haproxy): skipped");
                    return None;
                }
                let servers: String = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("  server s{i} {b}\n"))
                    .collect();
                let conf = format!(
                    "global\n  nbthread 1\n  maxconn 9000\n\
                     defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout tunnel 1h\n\
                     frontend fe\n  bind {addr}\n  option forwardfor\n  default_backend be\n\
                     backend be\n  balance url_param u\n  hash-type consistent\n{servers}"
                );
                std::fs::write(dir.path().join("haproxy.cfg"), conf).unwrap();
                let mut c = pinned(program);
                c.args(["-f", &format!("{d}/haproxy.cfg"), "-db"]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not start listening",
                kind.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Target {
            kind,
            addr,
            backends: backends.to_vec(),
            child: Some(child),
            _dir: dir,
        })
    }

    /// Where client number `id` connects.
    pub fn addr_for(&self, id: usize) -> SocketAddr {
        match self.kind {
            Kind::Direct => self.backends[id % self.backends.len()],
            _ => self.addr,
        }
    }

    /// Every process of the target (nginx: master and worker); empty for `Direct`.
    pub fn pids(&self) -> Vec<u32> {
        self.child
            .as_ref()
            .map_or(Vec::new(), |c| measure::family(c.id()))
    }
}

impl Drop for Target {
    /// SIGTERM, so nginx's master takes its workers down with it; SIGKILL if that
    /// takes more than five seconds.
    fn drop(&mut self) {
        let Some(c) = &mut self.child else { return };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `program` pinned to core 0 (the load generator and backends have core 1).
fn pinned(program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0", program]);
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
