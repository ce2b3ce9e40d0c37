//! `berth machine update|rollback`: change only what the flags say, as a compare-and-swap on
//! the config version that was read, and say what changed.

use berth_api_types::{RollbackRequest, UpdateMachine};
use berth_client::{Client, ClientError};
use berth_types::{MachineConfig, MachineRecord};

use crate::cli::{Fail, UpdateArgs, kv};
use crate::machine::{restart_policy, show};
use crate::{outcome, resolve};

/// The config `a` asks for, from the current one: only the fields its flags name change.
fn changed_config(current: &MachineConfig, a: &UpdateArgs) -> Result<MachineConfig, Fail> {
    let mut config = current.clone();
    config.env.extend(kv(&a.env, "--env")?);
    if let Some(image) = &a.image {
        config.image = Some(image.clone());
    }
    if let Some(p) = &a.restart {
        config.restart.policy = restart_policy(p)?;
    }
    if let Some(mb) = a.memory {
        config.resources.memory_mb = Some(mb);
    }
    crate::config_flags::apply(&a.config, &mut config)?;
    Ok(config)
}

/// One line per change, `field: old → new` (env variables one by one).
pub(crate) fn describe_changes(old: &MachineConfig, new: &MachineConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &new.env {
        match old.env.get(k) {
            None => out.push(format!("env.{k}: (unset) → {v:?}")),
            Some(was) if was != v => out.push(format!("env.{k}: {was:?} → {v:?}")),
            Some(_) => {}
        }
    }
    for k in old.env.keys().filter(|k| !new.env.contains_key(*k)) {
        out.push(format!("env.{k}: removed"));
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    if old.image != new.image {
        out.push(format!("image: {} → {}", opt(&old.image), opt(&new.image)));
    }
    if old.restart.policy != new.restart.policy {
        out.push(format!(
            "restart: {} → {}",
            crate::render::spelled(&old.restart.policy),
            crate::render::spelled(&new.restart.policy)
        ));
    }
    if old.resources.memory_mb != new.resources.memory_mb {
        let mb = |v: Option<u64>| v.map_or_else(|| "(none)".into(), |m| format!("{m} MiB"));
        out.push(format!(
            "memory: {} → {}",
            mb(old.resources.memory_mb),
            mb(new.resources.memory_mb)
        ));
    }
    let some = |v: Option<String>| v.unwrap_or_else(|| "(none)".into());
    if old.resources.cpus != new.resources.cpus {
        let (a, b) = (old.resources.cpus, new.resources.cpus);
        let (a, b) = (
            a.map(|c| format!("{c} CPUs")),
            b.map(|c| format!("{c} CPUs")),
        );
        out.push(format!("cpus: {} → {}", some(a), some(b)));
    }
    if old.resources.pids != new.resources.pids {
        let (a, b) = (old.resources.pids, new.resources.pids);
        let (a, b) = (a.map(|p| p.to_string()), b.map(|p| p.to_string()));
        out.push(format!("pids: {} → {}", some(a), some(b)));
    }
    if old.restart.max_retries != new.restart.max_retries {
        let (a, b) = (old.restart.max_retries, new.restart.max_retries);
        let (a, b) = (a.map(|n| n.to_string()), b.map(|n| n.to_string()));
        out.push(format!("max retries: {} → {}", some(a), some(b)));
    }
    for field in changed_fields(old, new) {
        if !["env", "image", "restart", "resources"].contains(&field.as_str()) {
            out.push(format!("{field}: changed"));
        }
    }
    out
}

/// The top-level fields that differ (for those the lines above do not spell out).
fn changed_fields(old: &MachineConfig, new: &MachineConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// A 409 `version_mismatch` in words for the command line.
fn mismatch(id: &str, e: ClientError, read: u64, explicit: bool) -> Fail {
    if e.code() != Some("version_mismatch") {
        return e.into();
    }
    let why = if explicit {
        format!("--if-version {read} is not its current config version")
    } else {
        format!("it was changed by someone else after this command read version {read}")
    };
    Fail(
        1,
        format!(
            "machine {id} was not updated: {why}. Look at `berth machine versions {id}` and run the update again."
        ),
    )
}

/// `berth machine update`.
pub(crate) async fn update(c: &Client, a: &UpdateArgs) -> Result<(), Fail> {
    let id = resolve::machine_id(c, &a.id).await?;
    let current = c.get(&id).await?;
    let config = changed_config(&current.config, a)?;
    let changes = describe_changes(&current.config, &config);
    let say = |line: &str| {
        if a.out.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if changes.is_empty() {
        say(&format!(
            "machine {id}: nothing to change (config version {})",
            current.config_version
        ));
        show(&current, a.out.json);
        return Ok(());
    }
    let expected = a.if_version.unwrap_or(current.config_version);
    let req = UpdateMachine {
        config,
        current_version: Some(expected),
        skip_start: a.skip_start,
    };
    let m = c
        .update(&id, &req)
        .await
        .map_err(|e| mismatch(&id, e, expected, a.if_version.is_some()))?;
    say(&format!(
        "machine {id}: config version {} → {}",
        current.config_version, m.config_version
    ));
    for line in &changes {
        say(&format!("  {line}"));
    }
    show(&outcome::started(c, m).await?, a.out.json);
    Ok(())
}

/// `berth machine rollback`.
pub(crate) async fn rollback(
    c: &Client,
    id: &str,
    to: Option<u64>,
    json: bool,
) -> Result<(), Fail> {
    let id = resolve::machine_id(c, id).await?;
    let before: MachineRecord = c.get(&id).await?;
    let m = c
        .rollback(&id, &RollbackRequest { version: to })
        .await
        .map_err(|e| mismatch(&id, e, before.config_version, false))?;
    let line = format!(
        "machine {id}: config version {} → {} (the config of version {})",
        before.config_version,
        m.config_version,
        to.map_or_else(
            || before.config_version.saturating_sub(1).to_string(),
            |v| v.to_string()
        )
    );
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
        for change in describe_changes(&before.config, &m.config) {
            println!("  {change}");
        }
    }
    show(&outcome::started(c, m).await?, json);
    Ok(())
}
