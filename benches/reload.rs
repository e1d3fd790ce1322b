//! Does reloading leak? Resident memory of the real (release) binary after start-up and
//! after 500 SIGHUP reloads that alternate between two configurations (a route and a
//! backend added, then removed), with a live tunnel and a request between reloads.
//!
//! `cargo bench --bench reload`

#[path = "../tests/common/mod.rs"]
#[allow(dead_code, clippy::all)]
mod common;

use common::*;

const RELOADS: usize = 500;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to test here.
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nodes = nodes(&["a", "b", "c"]).await;
        let two = config(&nodes[..2], r#"principal = ["query:u"]"#, "");
        let three = config(&nodes, r#"principal = ["query:u"]"#, "")
            + "[[route]]\npath = \"/api\"\nupstream = \"app\"\n";
        let (_dir, path) = write_config(&two);
        let mut bin = Binary::spawn(&["run", "--config", &path]);
        let addr = bin.wait_listening();
        let (_tunnel, _) = ws(addr, "/ws?u=keep", &[]).await;
        for i in 0..50 {
            http_node(addr, &format!("/info?u={i}"), &[]).await;
        }
        let before = bin.proc_status_kb("VmRSS:");
        for i in 0..RELOADS {
            std::fs::write(&path, if i % 2 == 0 { &three } else { &two }).unwrap();
            bin.signal("HUP");
            bin.wait_for("configuration reloaded");
            http_node(addr, &format!("/info?u={i}"), &[]).await;
        }
        let after = bin.proc_status_kb("VmRSS:");
        let peak = bin.proc_status_kb("VmHWM:");
        println!("| reloads | RSS |");
        println!("|---|---|");
        println!("| 0 | {before} KiB |");
        println!("| {RELOADS} | {after} KiB (peak {peak} KiB) |");
        bin.signal("TERM");
        assert!(bin.wait_exit().success());
    });
}
