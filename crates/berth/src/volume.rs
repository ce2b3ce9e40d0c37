//! `berth volume ls|create|rm`: the host's named volumes.

use berth_api_types::Volume;

use crate::cli::{Cli, Fail, VolumeCmd, print_json};

pub(crate) async fn run(cli: &Cli, cmd: &VolumeCmd) -> Result<(), Fail> {
    let c = cli.client()?;
    match cmd {
        VolumeCmd::Ls { out } => {
            let volumes = c.volumes().await?;
            if out.json {
                print_json(&volumes)
            } else {
                print!("{}", table(&volumes))
            }
        }
        VolumeCmd::Create { name, out } => {
            let v = c.create_volume(name).await?;
            if out.json {
                print_json(&v)
            } else {
                println!("created {} at {}", v.name, v.path)
            }
        }
        VolumeCmd::Rm { name } => {
            c.remove_volume(name).await?;
            println!("removed {name}");
        }
    }
    Ok(())
}

fn table(volumes: &[Volume]) -> String {
    let mut out = format!(
        "{:<24} {:<11} {:<12} {}\n",
        "NAME", "OWNER", "IN USE BY", "PATH"
    );
    for v in volumes {
        let users = if v.in_use_by.is_empty() {
            "-".to_owned()
        } else {
            v.in_use_by.len().to_string()
        };
        out.push_str(&format!(
            "{:<24} {:<11} {users:<12} {}\n",
            v.name,
            format!("{}:{}", v.uid, v.gid),
            v.path
        ));
    }
    out
}
