//! `lava-flow`: what this machine can share between Vulkan, CUDA, OpenGL and OpenCL.

mod info;

use clap::{Parser, Subcommand};

/// Zero-copy GPU memory sharing between Vulkan, CUDA, OpenGL and OpenCL.
#[derive(Parser)]
#[command(name = "lava-flow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per device: identity, and for each API whether it is present (or why not) and which
    /// external handle types it exports and imports.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { json } => info::run(json),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lava-flow: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
