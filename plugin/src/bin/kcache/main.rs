//! `kcache`: the node CLI. It parses arguments, calls kcache-core, prints, and exits:
//! 0 = allowed / verified, 1 = denied / rejected, 2 = usage or configuration error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cache_cmd;
mod cache_store_cmd;
mod doctor_cmd;
mod generate_cmd;
mod install_cmd;
mod policy_cmd;
mod registry_args;
mod sign_cmd;
mod sigstore_cmd;
mod verify_cmd;

#[derive(Parser)]
#[command(
    name = "kcache",
    version,
    about = "Verify container images and manage kernel caches on a node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify an image against the node policy (exit 0 allowed, 1 denied, 2 error).
    Verify(verify_cmd::VerifyArgs),
    /// Write a cosign-compatible key pair (password from COSIGN_PASSWORD).
    GenerateKeyPair(sign_cmd::GenerateKeyPairArgs),
    /// Sign an image with a key: cosign v2 `.sig` (and with --v3 a Sigstore bundle referrer).
    Sign(sign_cmd::SignArgs),
    /// The node's GPU inventory (NVML, AMD KFD, or a pinned file).
    Gpu(cache_cmd::GpuArgs),
    /// Kernel-cache images.
    Cache {
        #[command(subcommand)]
        command: cache_cmd::CacheCommand,
    },
    /// Wire kcache into the container runtime (containerd).
    Install {
        #[command(subcommand)]
        command: install_cmd::InstallCommand,
    },
    /// Check every way a pull on this node could skip verification (containerd's effective
    /// config, kcached's mode, optionally a canary pulled through CRI); exit 1 on a problem.
    Doctor(Box<doctor_cmd::DoctorArgs>),
    /// Policy tools: render it for CRI-O's verifier (containers/image).
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
    },
    /// Sigstore tools (the sigstore-conformance client protocol).
    Sigstore {
        #[command(subcommand)]
        command: sigstore_cmd::SigstoreCommand,
    },
    /// Man pages and shell completions for packaging.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: generate_cmd::GenerateCommand,
    },
}

/// Exit codes shared by every command.
pub enum Outcome {
    /// Verified / allowed.
    Ok,
    /// Rejected / denied, with a one-line reason.
    Rejected(String),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Sigstore { command } => sigstore_cmd::run(command),
        Command::Verify(a) => verify_cmd::run(a),
        Command::GenerateKeyPair(a) => sign_cmd::generate_key_pair(a),
        Command::Sign(a) => sign_cmd::sign(a),
        Command::Gpu(a) => cache_cmd::gpu(a),
        Command::Cache { command } => cache_cmd::run(command),
        Command::Install { command } => install_cmd::run(command),
        Command::Policy { command } => policy_cmd::run(command),
        Command::Doctor(a) => doctor_cmd::run(*a),
        Command::Generate { command } => generate_cmd::run(command),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Rejected(reason)) => {
            eprintln!("{reason}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
