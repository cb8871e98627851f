//! Runs the `hoa` binary the way a person does, for the CLI tests: arguments in, the process's
//! status and output back, all of it printed so that a failing test shows what hoa said.
#![allow(dead_code)]

use std::process::{Command, Output};

pub fn hoa(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args(args)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .output()
        .expect("run hoa");
    eprintln!(
        "hoa {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
