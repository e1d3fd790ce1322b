//! Real headless browsers: Chromium, driven over the Chrome DevTools Protocol with the
//! same WebSocket client the tests already use, and Firefox, driven over Marionette,
//! its own remote protocol. Launch, open a page, evaluate JavaScript, wait for a
//! condition, take a screenshot.
//!
//! Browser tests need Debian's `chromium` and `firefox-esr` (`.ci/run` installs them).
//! Where one is missing its launch returns `None` and the test says it skipped, unless
//! `TETHER_REQUIRE_BROWSER` is set (CI), which makes a missing browser a failure.

use std::process::{Child, Command};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::{PATIENCE, Ws, spawn_lines};

const CHROMIUM: &str = "/usr/bin/chromium";
const FIREFOX: &str = "/usr/bin/firefox-esr";

pub struct Browser {
    child: Child,
    driver: Driver,
    _profile: tempfile::TempDir,
}

enum Driver {
    Chromium {
        cdp: Box<Ws>,
        session: String,
        next_id: u64,
    },
    Firefox {
        marionette: tokio::io::BufReader<tokio::net::TcpStream>,
        next_id: u64,
    },
}

/// Whether `program` is installed; if not, whether the test may skip.
fn installed(program: &str, package: &str) -> bool {
    if std::path::Path::new(program).exists() {
        return true;
    }
    assert!(
        std::env::var("TETHER_REQUIRE_BROWSER").is_err(),
        "{program} is required (apt-get install {package})"
    );
    eprintln!("skipped: {program} is not installed");
    false
}

/// Starts `cmd` and returns the first text after `prefix` on a line of its output
/// (Chromium says it on stderr, Firefox on stdout).
fn spawn_announcing(mut cmd: Command, prefix: &str, what: &str) -> (Child, String) {
    let (mut child, lines) = spawn_lines(&mut cmd, true);
    let deadline = std::time::Instant::now() + PATIENCE;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some((_, rest)) = line.split_once(prefix) {
                    return (child, rest.trim().to_owned());
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what}");
}

impl Browser {
    /// Starts Chromium with a fresh profile and one blank page.
    pub async fn launch() -> Option<Browser> {
        if !installed(CHROMIUM, "chromium") {
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags the machine notes recommend: no background traffic, which the closed
        // network would refuse, no sandbox (we run as root).
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--remote-debugging-port=0",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank");
        let (child, url) = spawn_announcing(
            cmd,
            "DevTools listening on ",
            "Chromium did not start its DevTools endpoint",
        );
        let (cdp, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let mut b = Browser {
            child,
            driver: Driver::Chromium {
                cdp: Box::new(cdp),
                session: String::new(),
                next_id: 0,
            },
            _profile: profile,
        };
        let target = b
            .cdp(
                "Target.createTarget",
                json!({ "url": "about:blank" }),
                false,
            )
            .await;
        let attached = b
            .cdp(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
                false,
            )
            .await;
        if let Driver::Chromium { session, .. } = &mut b.driver {
            *session = attached["sessionId"].as_str().unwrap().to_owned();
        }
        b.call("Page.enable", json!({})).await;
        Some(b)
    }

    /// Starts Firefox with a fresh profile, accepting the tests' certificates (as
    /// Chromium's `--ignore-certificate-errors`).
    pub async fn firefox() -> Option<Browser> {
        if !installed(FIREFOX, "firefox-esr") {
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        // Marionette on a port of its choosing; no background traffic, which the closed
        // network would refuse.
        std::fs::write(
            profile.path().join("user.js"),
            "user_pref(\"marionette.port\", 0);\n\
             user_pref(\"app.update.disabledForTesting\", true);\n\
             user_pref(\"browser.shell.checkDefaultBrowser\", false);\n\
             user_pref(\"datareporting.policy.dataSubmissionEnabled\", false);\n\
             user_pref(\"network.captive-portal-service.enabled\", false);\n\
             user_pref(\"network.connectivity-service.enabled\", false);\n",
        )
        .unwrap();
        let mut cmd = Command::new(FIREFOX);
        cmd.args(["--headless", "--marionette", "--no-remote", "--profile"])
            .arg(profile.path())
            .args(["--window-size=1200,900", "about:blank"]);
        let (child, port) = spawn_announcing(
            cmd,
            "Listening on port ",
            "Firefox did not start Marionette",
        );
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port.parse().unwrap()))
            .await
            .unwrap();
        let mut b = Browser {
            child,
            driver: Driver::Firefox {
                marionette: tokio::io::BufReader::new(stream),
                next_id: 0,
            },
            _profile: profile,
        };
        if let Driver::Firefox { marionette, .. } = &mut b.driver {
            read_marionette(marionette).await; // its greeting
        }
        b.marionette(
            "WebDriver:NewSession",
            json!({ "acceptInsecureCerts": true }),
        )
        .await
        .unwrap();
        Some(b)
    }

    /// A CDP command, to the page or else to the browser.
    async fn cdp(&mut self, method: &str, params: Value, to_page: bool) -> Value {
        let Driver::Chromium {
            cdp,
            session,
            next_id,
        } = &mut self.driver
        else {
            panic!("{method}: a DevTools command, and this is not Chromium");
        };
        *next_id += 1;
        let id = *next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if to_page {
            msg["sessionId"] = json!(session);
        }
        cdp.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(PATIENCE, cdp.next())
                .await
                .expect("no CDP answer")
                .unwrap()
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// A Marionette command: its result, or the error it answered with.
    async fn marionette(&mut self, command: &str, params: Value) -> Result<Value, Value> {
        let Driver::Firefox {
            marionette,
            next_id,
        } = &mut self.driver
        else {
            panic!("{command}: a Marionette command, and this is not Firefox");
        };
        *next_id += 1;
        let id = *next_id;
        let body = json!([0, id, command, params]).to_string();
        let frame = format!("{}:{body}", body.len());
        marionette
            .get_mut()
            .write_all(frame.as_bytes())
            .await
            .unwrap();
        loop {
            let reply = read_marionette(marionette).await;
            if reply[1] == id {
                return match &reply[2] {
                    Value::Null => Ok(reply[3].clone()),
                    error => Err(error.clone()),
                };
            }
        }
    }

    /// A CDP command to the page (Chromium only).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.cdp(method, params, true).await
    }

    pub async fn navigate(&mut self, url: &str) {
        if matches!(self.driver, Driver::Chromium { .. }) {
            self.call("Page.navigate", json!({ "url": url })).await;
        } else {
            let r = self
                .marionette("WebDriver:Navigate", json!({ "url": url }))
                .await;
            r.unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        }
    }

    /// The value of a JavaScript expression in the page, a promise's once settled
    /// (`null` while it throws).
    pub async fn eval(&mut self, expr: &str) -> Value {
        if matches!(self.driver, Driver::Chromium { .. }) {
            let r = self
                .call(
                    "Runtime.evaluate",
                    json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
                )
                .await;
            r["result"]["value"].clone()
        } else {
            let script = format!("return ({expr});");
            let r = self
                .marionette(
                    "WebDriver:ExecuteScript",
                    json!({ "script": script, "args": [] }),
                )
                .await;
            r.map(|v| v["value"].clone()).unwrap_or(Value::Null)
        }
    }

    /// Polls `expr` until it is truthy (at most PATIENCE); returns its value.
    pub async fn wait_for(&mut self, expr: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let v = self.eval(expr).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "page never satisfied {expr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        let data = if matches!(self.driver, Driver::Chromium { .. }) {
            let shot = self
                .call("Page.captureScreenshot", json!({ "format": "png" }))
                .await;
            shot["data"].clone()
        } else {
            let shot = self
                .marionette("WebDriver:TakeScreenshot", json!({ "full": false }))
                .await;
            shot.unwrap()["value"].clone()
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// One Marionette message: `length:json`.
async fn read_marionette(conn: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> Value {
    let read = async {
        let mut len = Vec::new();
        conn.read_until(b':', &mut len).await.unwrap();
        let len: usize = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("no Marionette answer")
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
