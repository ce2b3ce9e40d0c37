//! `berth-shim <machine dir>`: the per-machine supervisor (see `berth_driver::shim`).
#![allow(clippy::print_stderr)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(berth_driver::shim::main(&args));
}
