//! The `tether` binary: CLI, tracing, config loading, binding, signals. The proxy
//! itself is the library's [`tether::run`].

#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use tether::balance::Table;
use tether::config::{Config, summary};
use tether::demo::{self, Node};
use tether::listener::Kind;
use tether::principal::Principal;
use tether::{Listener, Live, Server};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Sticky reverse proxy for clustered WebSocket apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGINT or SIGTERM.
    Run {
        #[arg(long, short, default_value = "conf/tether.toml")]
        config: PathBuf,
        /// Log as JSON lines (also `[log] format = "json"` in the config).
        #[arg(long)]
        log_json: bool,
    },
    /// Validate a configuration and print a summary; on error print file:line:col and exit 1.
    Check {
        #[arg(long, short, default_value = "conf/tether.toml")]
        config: PathBuf,
    },
    /// Print the id of the backend that owns KEY when all backends are up.
    Owner {
        #[arg(long, short, default_value = "conf/tether.toml")]
        config: PathBuf,
        #[arg(long, short)]
        upstream: String,
        /// The principal's value, decoded (e.g. the user id, the cookie value); any
        /// bytes, as the proxy takes them.
        #[arg(allow_hyphen_values = true)]
        key: OsString,
    },
    /// Start three demo nodes on loopback and tether in front of them.
    Demo {
        #[arg(long, short, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The admin listener (status page, metrics); default 127.0.0.1:9090 if free,
        /// else any free port.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
}

/// `print!` / `println!` through [`emit`].
macro_rules! out {
    ($($t:tt)*) => {
        emit(format_args!($($t)*))
    };
}

macro_rules! outln {
    ($($t:tt)*) => {
        emit(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// Writes to stdout. A reader that went away (`tether check | head -1`) is not an
/// error, what was printed is all it wanted; any other failure (a full disk) ends
/// tether with status 1 rather than a panic.
fn emit(args: std::fmt::Arguments) {
    if let Err(e) = std::io::stdout().write_fmt(args)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        let _ = writeln!(std::io::stderr(), "cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// The binary's allocator; src/heap.rs says why, and purges it after churn.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tether::heap::no_huge_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Owner {
            config,
            upstream,
            key,
        } => owner(&config, &upstream, &key),
        Command::Run { config, log_json } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|loaded| {
                logging(log_json || loaded.log_json);
                raise_open_files();
                runtime(loaded.workers)?.block_on(serve(&config, loaded, log_json))
            }),
        Command::Demo { listen, admin } => {
            logging(false);
            raise_open_files();
            runtime(None).and_then(|rt| rt.block_on(demo(listen, admin)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, text or JSON lines; the level comes from `RUST_LOG` (default
/// `info`). Access events are at info level on target `tether::access`.
fn logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line that cannot be written (stderr's reader went away) is dropped. With
    // internal errors on, tracing-subscriber reports it with `eprintln!`, which panics
    // on the same broken pipe and takes down the task that logged: every request.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if json {
        fmt.json().flatten_event(true).init();
    } else {
        if std::io::stderr().is_terminal() {
            fmt.init();
        } else {
            fmt.with_ansi(false)
                .event_format(tether::logline::Plain::default())
                .init();
        }
    }
}

/// The async runtime: `workers` threads, by default one per core this process may
/// run on (so `taskset -c 0 tether run` gets one).
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let n = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    info!(workers = n, "starting");
    let mut b = if n == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(n);
        b
    };
    b.enable_all()
        .on_thread_park(tether::heap::on_park)
        .build()
        .context("cannot start the async runtime")
}

/// Every connection is a file descriptor (two for a tunnel): raise the soft limit to
/// the hard one, and say so.
fn raise_open_files() {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now > before => info!(
            soft = now,
            hard,
            was = before,
            "raised the soft open-file limit to the hard limit"
        ),
        Ok(now) => info!(soft = now, hard, "open-file limit"),
        Err(e) => warn!(error = %e, soft = before, hard, "cannot raise the open-file limit"),
    }
}

/// `max_connections`: as configured, else what the open-file limit allows with two
/// descriptors per connection (a tunnel holds one to the client and one to its
/// backend), after a reserve for pooled backend connections, probes, the admin
/// listener and files. HAProxy derives its `maxconn` from `ulimit -n` the same way.
/// Running out of descriptors instead would fail probes and connects alike.
fn connection_limit(configured: Option<usize>) -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let reserve = (soft / 4).min(1024);
    let fits = usize::try_from((soft - reserve) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    match configured {
        Some(n) if n > fits => {
            warn!(
                max_connections = n,
                open_files = soft,
                "max_connections is more than the open-file limit allows ({fits}): descriptors may run out first"
            );
            n
        }
        Some(n) => n,
        None => fits,
    }
}

fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    out!("{}: ok\n{}", path.display(), summary(&config));
    Ok(())
}

fn owner(path: &Path, upstream: &str, key: &OsStr) -> Result<()> {
    if key.is_empty() {
        bail!("KEY is empty; tether never places by an empty value (the route's fallback applies)");
    }
    // Only ids and weights: a machine without the certificates or the backends' DNS
    // gets the same answer.
    let placements = Config::placements(path)?;
    let Some((_, backends)) = placements.iter().find(|(name, _)| name == upstream) else {
        let known: Vec<&str> = placements.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "no upstream `{upstream}` in {}; defined: {}",
            path.display(),
            known.join(", ")
        );
    };
    let key = Principal::from_bytes(key.as_bytes()).key();
    let table = Table::new(backends.iter().map(|(id, weight)| (id.as_str(), *weight)));
    match table.owner(key) {
        Some(i) => outln!("{}", backends[i].0),
        None => bail!("upstream `{upstream}` has no backends"),
    }
    Ok(())
}

/// `cli_json`: `--log-json` was given (JSON whatever the file says).
async fn serve(path: &Path, config: Config, cli_json: bool) -> Result<()> {
    // Before anything slow: from here on SIGHUP reloads instead of killing us.
    let mut signals = Signals::new()?;
    let listeners = bind(tether::reload::binds(&config))
        .await
        .with_context(|| path.display().to_string())?;
    let at_start = StartOnly::of(&config, cli_json);
    let mut config = config;
    config.max_connections = Some(connection_limit(config.max_connections));
    let live = Arc::new(Live::new(&config));
    let max_connections = live.max_connections;
    let server = Server::start(live, listeners);
    info!(config = %path.display(), max_connections, "tether started");
    warn_about(&config);
    notify(&[NotifyState::Ready]);
    loop {
        match signals.next().await {
            Sig::Reload => {
                let mut states = vec![NotifyState::Reloading];
                states.extend(NotifyState::monotonic_usec_now().ok());
                notify(&states);
                // systemd has no "reload failed" message: STATUS= makes the outcome
                // visible in `systemctl status`.
                let status = match reload(&server, path, &at_start).await {
                    Ok(()) => "configuration reloaded".to_owned(),
                    Err(why) => format!("reload failed, the running configuration stays: {why}")
                        .replace('\n', " "),
                };
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
            Sig::Stop(name) => {
                info!("{name} received: shutting down");
                break;
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    tokio::spawn(async move {
        loop {
            match signals.next().await {
                Sig::Stop(name) => {
                    warn!(
                        "{name} received while shutting down: exiting without waiting for the drain"
                    );
                    std::process::exit(1);
                }
                Sig::Reload => info!("SIGHUP received while shutting down: not reloading"),
            }
        }
    });
    server.shutdown().await;
    Ok(())
}

/// Re-reads `path` and applies it; on any error (unreadable, invalid, a new listener
/// that cannot bind) the running configuration stays and the error is logged and
/// returned.
async fn reload(server: &Server, path: &Path, at_start: &StartOnly) -> Result<(), String> {
    let keep = "reload failed; the running configuration stays";
    // Counted before it is logged: whoever reads the log line then finds the metric.
    let failed = |why: String| {
        server.reload_failed(&why);
        error!("{keep}: {why}");
        Err(why)
    };
    // Reading files and resolving backend host names block: off the runtime's
    // threads, so a slow resolver never stalls traffic (with `workers = 1` there is
    // no other thread to carry it).
    let file = path.to_owned();
    let config = match tokio::task::spawn_blocking(move || Config::load(&file)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(tether::proxy::error::chain(&e)),
        Err(e) => return failed(format!("loading the configuration failed: {e}")),
    };
    let fresh = match bind(tether::reload::binds_to_open(&server.listening(), &config)).await {
        Ok(l) => l,
        Err(e) => return failed(format!("{}: {e:#}", path.display())),
    };
    server.reload(&config, fresh);
    info!(config = %path.display(), "configuration reloaded");
    warn_about(&config);
    at_start.warn_if_changed(&StartOnly::of(&config, at_start.cli_json));
    Ok(())
}

/// Logs what is valid but probably not meant ([`Config::warnings`]).
fn warn_about(config: &Config) {
    for w in config.warnings() {
        warn!("{w}");
    }
}

/// Settings read once at start (the runtime and the log format are made then); a
/// reload that changes them says they wait for a restart.
struct StartOnly {
    workers: Option<usize>,
    max_connections: Option<usize>,
    /// The format in effect: `--log-json` or the file's.
    log_json: bool,
    /// `--log-json` was given: JSON whatever a reloaded file says.
    cli_json: bool,
}

impl StartOnly {
    fn of(c: &Config, cli_json: bool) -> StartOnly {
        StartOnly {
            workers: c.workers,
            max_connections: c.max_connections,
            log_json: cli_json || c.log_json,
            cli_json,
        }
    }

    fn warn_if_changed(&self, new: &StartOnly) {
        if self.workers != new.workers {
            warn!("`workers` is read at start: restart tether to apply the new value");
        }
        if self.max_connections != new.max_connections {
            warn!("`max_connections` is read at start: restart tether to apply the new value");
        }
        if self.log_json != new.log_json {
            warn!("`[log] format` is read at start: restart tether to apply the new value");
        }
    }
}

/// Best effort: a service manager that cannot be told is not a reason to stop.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

/// The signals tether acts on: SIGHUP reloads, SIGINT and SIGTERM stop.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

enum Sig {
    Reload,
    Stop(&'static str),
}

impl Signals {
    fn new() -> Result<Signals> {
        let on = |kind| signal(kind).context("cannot install signal handlers");
        Ok(Signals {
            hup: on(SignalKind::hangup())?,
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.hup.recv() => Sig::Reload,
            _ = self.term.recv() => Sig::Stop("SIGTERM"),
            _ = self.int.recv() => Sig::Stop("SIGINT"),
        }
    }

    /// The next SIGINT or SIGTERM (SIGHUP is ignored).
    async fn stop(&mut self) {
        while let Sig::Reload = self.next().await {}
    }
}

async fn demo(listen: SocketAddr, admin: Option<SocketAddr>) -> Result<()> {
    let mut signals = Signals::new()?;
    let traffic = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (another with --listen)"))?;
    // The admin listener where asked, else on 9090 if it is free, else anywhere.
    let admin = match admin {
        Some(addr) => TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?,
        None => match TcpListener::bind(DEMO_ADMIN).await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot open the admin listener")?,
        },
    };
    let (local, admin_addr) = (traffic.local_addr()?, admin.local_addr()?);
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let node = Node::start(name)
            .await
            .context("cannot start a demo node")?;
        node.link_status(format!("http://{admin_addr}/status"));
        nodes.push(node);
    }
    let text = demo::config(listen, admin_addr, &nodes);
    let mut config = Config::parse(&text, "demo")?;
    config.max_connections = Some(connection_limit(config.max_connections));
    let listeners = vec![
        Listener::new(listen, traffic),
        Listener::with_kind(Kind::Admin, admin_addr, admin),
    ];
    outln!("tether demo: three nodes behind tether, placed by user name.\n");
    for n in &nodes {
        outln!("  {}  http://{}", n.name, n.addr);
    }
    outln!("\nOpen http://{local}/ in a browser, or try:");
    outln!("  curl -s 'http://{local}/info?user=alice'   (always the same node for alice)");
    outln!("Status page: http://{admin_addr}/status   metrics: http://{admin_addr}/metrics");
    outln!("\nThe configuration in use:\n\n{text}");
    outln!("Ctrl-C stops it.");
    let live = Arc::new(Live::new(&config));
    tether::run(listeners, live, signals.stop()).await;
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

const DEMO_ADMIN: &str = "127.0.0.1:9090";

async fn bind(binds: impl IntoIterator<Item = (Kind, SocketAddr)>) -> Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (kind, bind) in binds {
        let socket = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        out.push(Listener::with_kind(kind, bind, socket));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_format_change_is_judged_by_the_format_in_effect() {
        let text = "[[listener]]\nbind = \"127.0.0.1:0\"\n";
        let plain = Config::parse(text, "t").unwrap();
        let json = Config::parse(&format!("{text}[log]\nformat = \"json\"\n"), "t").unwrap();
        // --log-json: JSON from the start, whatever the file says later.
        let cli = StartOnly::of(&plain, true);
        assert_eq!(cli.log_json, StartOnly::of(&json, true).log_json);
        // Without it the file decides, and a change is one.
        assert_ne!(
            StartOnly::of(&plain, false).log_json,
            StartOnly::of(&json, false).log_json
        );
    }
}
