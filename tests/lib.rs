//! End-to-end tests of berth: real processes, real files, real sockets.
//!
//! Each test file here is a `[[test]]` target; helper programs they run are `[[bin]]` targets,
//! found through `CARGO_BIN_EXE_<name>`.
