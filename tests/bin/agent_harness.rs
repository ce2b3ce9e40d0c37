//! Test harness: runs the agent core in a real process, driven by JSON lines on stdin, so tests
//! can SIGKILL it and start it again on the same data directory. (`berthd` with its HTTP API is
//! the production wrapper of the same core.)
//!
//! Usage: `agent-harness DATA_DIR`; `BERTH_RECONCILE_MS` sets the reconcile interval (default
//! 200). Prints `{"ready":true}` once started; then answers each command with one line,
//! `{"ok": ...}` or `{"error": "..."}`. Commands: `create`, `get`, `start`, `stop`, `restart`,
//! `destroy`, `history`, `status`, `reconcile`.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, Write};
use std::time::Duration;

use berth_agent::{Agent, AgentConfig};
use berth_machine::CreateRequest;
use berth_types::{MachineConfig, MachineId, OpKind, Source};
use serde_json::{Value, json};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: agent-harness DATA_DIR")?;
    let mut cfg = AgentConfig::new(dir.into());
    let ms = std::env::var("BERTH_RECONCILE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    cfg.reconcile_interval = Duration::from_millis(ms);
    let agent = Agent::start(cfg).await?;
    say(&json!({"ready": true}));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let reply = match handle(&agent, &line).await {
            Ok(v) => json!({ "ok": v }),
            Err(e) => json!({ "error": e }),
        };
        say(&reply);
    }
    Ok(())
}

fn say(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

async fn handle(agent: &Agent, line: &str) -> Result<Value, String> {
    let cmd: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let id = || -> Result<MachineId, String> {
        MachineId::parse(cmd["id"].as_str().unwrap_or_default()).map_err(|e| e.to_string())
    };
    let op = cmd["op"].as_str().unwrap_or_default();
    let machine =
        |m: berth_types::MachineRecord| serde_json::to_value(m).map_err(|e| e.to_string());
    match op {
        "create" => {
            let config: MachineConfig =
                serde_json::from_value(cmd["config"].clone()).map_err(|e| e.to_string())?;
            let req = CreateRequest {
                id: Some(id()?),
                name: None,
                config,
                metadata: Default::default(),
                skip_start: cmd["skip_start"].as_bool().unwrap_or(false),
                source: Source::User,
            };
            machine(agent.create(req).await.map_err(|e| e.to_string())?)
        }
        "get" => machine(
            agent
                .store()
                .machine(&id()?)
                .map_err(|e| e.to_string())?
                .ok_or("not found")?,
        ),
        "history" => {
            serde_json::to_value(agent.store().history(&id()?).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())
        }
        "start" | "stop" | "restart" | "destroy" => {
            let kind = match op {
                "start" => OpKind::Start,
                "stop" => OpKind::Stop,
                "restart" => OpKind::Restart,
                _ => OpKind::Destroy,
            };
            let timeout = cmd["timeout_ms"].as_u64().map(Duration::from_millis);
            let signal = cmd["signal"].as_str().map(str::to_owned);
            machine(
                agent
                    .operate(&id()?, kind, signal, timeout)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
        "status" => serde_json::to_value(agent.status()).map_err(|e| e.to_string()),
        "reconcile" => {
            let approve = cmd["approve"].as_bool().unwrap_or(false);
            serde_json::to_value(agent.reconcile_once(approve).await).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown op {other:?}")),
    }
}
