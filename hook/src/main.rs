//! `kcache-hook prestart|poststop`: see the crate docs of `kcache_hook` (exit codes included).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use kcache_hook::{HookError, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    kcache_hook::sanitize_process();
    let result = Options::parse(args)
        .map_err(HookError::from)
        .and_then(|opts| kcache_hook::run(&opts, std::io::stdin().lock()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kcache-hook: {}", kcache_hook::error_chain(&e));
            if let HookError::Usage(_) = e {
                eprintln!("{}", kcache_hook::USAGE);
            }
            ExitCode::from(e.exit_code())
        }
    }
}
