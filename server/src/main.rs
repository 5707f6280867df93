//! `pulse`: the pulse service and its command-line tools.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pulse",
    version,
    about = "Embeds brand signals and finds trends in them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts from JSON lines or plain lines into JSON lines.
    Embed(commands::embed::EmbedArgs),
    /// Inspect models.
    Models {
        #[command(subcommand)]
        command: commands::models::ModelsCommand,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PULSE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Embed(args) => commands::embed::run(args),
        Command::Models { command } => commands::models::run(command),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pulse: {err:#}");
            ExitCode::FAILURE
        }
    }
}
