//! `kcache-hook prestart|poststop`: see the crate docs of `kcache_hook`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    kcache_hook::sanitize_process();
    let opts = match kcache_hook::Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kcache-hook: {e}");
            return ExitCode::from(2);
        }
    };
    match kcache_hook::run(&opts, std::io::stdin().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
