//! `berth man DIR`: clap_mangen's page for berth and for each of its (visible) subcommands,
//! each with an EXAMPLES and an EXIT STATUS section added before VERSION. The examples are
//! written here per page; the exit codes are the ones `main.rs` documents.

use std::path::Path;

use clap::CommandFactory;
use roff::{Roff, bold, roman};

use crate::cli::{Cli, Fail};

/// Writes every page into `dir`.
pub(crate) fn write_all(dir: &Path) -> Result<(), Fail> {
    let fail = |e: std::io::Error| Fail(1, format!("writing man pages to {}: {e}", dir.display()));
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    write_page(cmd, dir).map_err(fail)
}

fn write_page(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        write_page(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let page = man.get_filename();
    let mut body = Vec::new();
    man.render(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let extra = sections(cmd.get_display_name().unwrap_or(cmd.get_name()));
    std::fs::write(dir.join(page), insert_before_version(&body, &extra))
}

/// `extra` placed before the VERSION section (or at the end when there is none).
fn insert_before_version(page: &str, extra: &str) -> String {
    match page.find("\n.SH VERSION") {
        Some(at) => format!("{}\n{}{}", &page[..at], extra.trim_end(), &page[at..]),
        None => format!("{}\n{}", page.trim_end(), extra),
    }
}

/// The EXAMPLES and EXIT STATUS sections of the page `name` (`berth-machine-create`).
fn sections(name: &str) -> String {
    let mut r = Roff::new();
    r.control("SH", ["EXAMPLES"]);
    for (what, line) in examples(name) {
        r.control("TP", []).text([bold(*line)]).text([roman(*what)]);
    }
    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        r.control("TP", [])
            .text([bold(*code)])
            .text([roman(*meaning)]);
    }
    if let Some(note) = exit_note(name) {
        r.control("PP", []).text([roman(note)]);
    }
    r.to_roff()
}

/// Every command's exit codes.
const EXIT_CODES: &[(&str, &str)] = &[
    ("0", "Success: you got what you asked for."),
    (
        "1",
        "The operation failed (a machine that ends failed, a refused request, a check that \
         found problems); the reason is on standard error.",
    ),
    (
        "2",
        "Usage error: an unknown flag, a bad value, an ambiguous id prefix.",
    ),
    (
        "3",
        "The agent could not be reached (its socket or address).",
    ),
    ("4", "Not found: no such machine, image or volume."),
    (
        "141",
        "The reader of standard output went away (berth events | head -1), as with SIGPIPE.",
    ),
];

/// What a page adds to the exit codes.
fn exit_note(name: &str) -> Option<&'static str> {
    Some(match name {
        "berth-machine-exec" => {
            "machine exec exits with the command's own exit code instead: 124 when the timeout \
             killed it, 127 when it could not be started."
        }
        "berth-machine-wait" => {
            "machine wait exits 1 at once when the machine is failed or destroyed and so will \
             not reach the state on its own, and 1 when the timeout passes."
        }
        "berth-host-health" => "host health exits 1 while the host is degraded.",
        "berth-db-check" => "db check exits 1 when the check found problems.",
        "berth-machine-start"
        | "berth-machine-stop"
        | "berth-machine-restart"
        | "berth-machine-destroy" => {
            "Given several machines, each is handled in turn and the exit code is the worst \
             seen. Stopping a stopped machine and destroying a destroyed one succeed."
        }
        _ => return None,
    })
}

/// A page's examples: what it does, and the command line.
fn examples(name: &str) -> &'static [(&'static str, &'static str)] {
    match name {
        "berth" => &[
            (
                "Create a machine named web running a command.",
                "berth machine create --name web -- python3 -m http.server 8080",
            ),
            (
                "Follow a machine's output with the time of each line.",
                "berth logs web -f -t",
            ),
            (
                "Talk to another host's agent over TCP.",
                "berth --api http://10.0.0.5:4280 --token \"$TOKEN\" machine ls",
            ),
        ],
        "berth-machine" => &[
            ("Every machine, fitted to the terminal.", "berth machine ls"),
            (
                "One machine's config, lease, usage, checks and events.",
                "berth machine status web",
            ),
        ],
        "berth-machine-list" => &[
            ("Every machine.", "berth machine ls"),
            (
                "The ids of the failed ones, for a script.",
                "berth machine ls --state failed -q",
            ),
            (
                "Everything, destroyed machines too, as JSON.",
                "berth machine ls --all --json",
            ),
        ],
        "berth-machine-status" => &[
            ("By name.", "berth machine status web"),
            ("By a unique prefix of the id.", "berth machine status 01j9"),
        ],
        "berth-machine-stats" => &[
            (
                "Every running machine's CPU, memory and restarts.",
                "berth machine stats",
            ),
            ("One machine, as JSON.", "berth machine stats web --json"),
        ],
        "berth-machine-create" => &[
            (
                "A command restarted when it fails, with 256 MiB.",
                "berth machine create --name api --restart on-failure --memory 256 -e PORT=8080 -- ./api",
            ),
            (
                "An image with a volume, waiting until its check passes.",
                "berth machine create --name web --image docker.io/library/nginx:1.27 -v data:/usr/share/nginx/html --check http=http:80/ --wait-healthy",
            ),
            (
                "Record it without starting it.",
                "berth machine create --skip-start -- sleep 1000",
            ),
        ],
        "berth-machine-start" => &[("Start two machines.", "berth machine start web api")],
        "berth-machine-stop" => &[(
            "Stop with SIGINT, SIGKILL after 30 seconds.",
            "berth machine stop web --signal INT --timeout 30s",
        )],
        "berth-machine-restart" => &[("Restart a machine.", "berth machine restart web")],
        "berth-machine-destroy" => &[
            (
                "Destroy a running machine, killing it first.",
                "berth machine destroy web --force",
            ),
            (
                "Destroy every failed machine.",
                "berth machine ls --state failed -q | xargs berth machine destroy",
            ),
        ],
        "berth-machine-signal" => &[(
            "Ask the workload to reload.",
            "berth machine signal web --signal HUP",
        )],
        "berth-machine-wait" => &[(
            "Wait up to a minute for the machine to be started.",
            "berth machine wait web --state started --timeout 1m",
        )],
        "berth-machine-events" => &[("A machine's event log.", "berth machine events web")],
        "berth-machine-exec" => &[
            (
                "Run a command inside a started machine.",
                "berth machine exec web -- cat /etc/os-release",
            ),
            (
                "With a timeout, the answer as JSON.",
                "berth machine exec web --timeout 5s --json -- ls /",
            ),
        ],
        "berth-machine-update" => &[
            (
                "Change one variable and the memory limit; the machine restarts with them.",
                "berth machine update web -e LOG=debug --memory 512",
            ),
            (
                "Record a new image without restarting.",
                "berth machine update web --image docker.io/library/nginx:1.28 --skip-start",
            ),
        ],
        "berth-machine-versions" => {
            &[("A machine's config versions.", "berth machine versions web")]
        }
        "berth-machine-rollback" => &[
            ("Back to the previous config.", "berth machine rollback web"),
            ("Back to version 3.", "berth machine rollback web --to 3"),
        ],
        "berth-events" => &[
            (
                "Follow the host's events (across agent restarts).",
                "berth events -f",
            ),
            (
                "One machine's events after seq 100, as JSON lines.",
                "berth events --machine web --after 100 --json",
            ),
        ],
        "berth-logs" => &[
            ("The last 100 lines.", "berth logs web"),
            (
                "Follow until the machine stops, with timestamps.",
                "berth logs web -f -t",
            ),
            (
                "Everything written in the last 10 minutes.",
                "berth logs web --since 10m",
            ),
        ],
        "berth-host" => &[("Host facts and supervision status.", "berth host status")],
        "berth-host-status" => &[("Host facts and supervision status.", "berth host status")],
        "berth-host-health" => &[(
            "In a monitoring script.",
            "berth host health || page-someone",
        )],
        "berth-host-cordon" => &[("Before maintenance.", "berth host cordon")],
        "berth-host-uncordon" => &[("After maintenance.", "berth host uncordon")],
        "berth-host-approve" => &[(
            "Let held restarts proceed once the host is fixed.",
            "berth host approve",
        )],
        "berth-db" => &[("How big the database is.", "berth db stats")],
        "berth-db-stats" => &[
            ("Through the agent.", "berth db stats"),
            ("With the agent stopped.", "berth db stats --offline"),
        ],
        "berth-db-compact" => &[
            ("Online, progress shown on a terminal.", "berth db compact"),
            ("With the agent stopped.", "berth db compact --offline"),
        ],
        "berth-db-check" => &[
            ("Through the agent.", "berth db check"),
            (
                "A file an agent crashed on, repaired first.",
                "berth db check --offline --repair",
            ),
        ],
        "berth-db-slow-ops" => &[("Recent slow operations.", "berth db slow-ops")],
        "berth-db-backup" => &[(
            "A snapshot while the agent runs.",
            "berth db backup /srv/backup/berth-$(date +%F).redb",
        )],
        "berth-image" => &[("Every image.", "berth image ls")],
        "berth-image-ls" => &[("Every image.", "berth image ls")],
        "berth-image-pull" => &[
            (
                "From a registry.",
                "berth image pull docker.io/library/busybox:1.36",
            ),
            (
                "From an OCI layout on disk.",
                "berth image pull oci:/srv/images/app:1.0",
            ),
        ],
        "berth-image-rm" => &[(
            "Remove an unused image.",
            "berth image rm sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741",
        )],
        "berth-volume" => &[("Every volume.", "berth volume ls")],
        "berth-volume-ls" => &[("Every volume.", "berth volume ls")],
        "berth-volume-create" => &[("An empty volume.", "berth volume create data")],
        "berth-volume-rm" => &[("Remove a volume no machine mounts.", "berth volume rm data")],
        "berth-doctor" => &[(
            "Compare the database with the live processes now.",
            "berth doctor",
        )],
        "berth-completions" => &[
            ("Bash, for this shell.", "source <(berth completions bash)"),
            (
                "Zsh, installed.",
                "berth completions zsh > \"${fpath[1]}/_berth\"",
            ),
        ],
        _ => &[],
    }
}
