//! `pulse`: the pulse service and its command-line tools.

mod commands;

use clap::{Parser, Subcommand};
use pulse_server::config::{LogFormat, ServeArgs, parse_with_file};
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
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
    /// Run the gRPC and HTTP service.
    Serve(Box<ServeArgs>),
    /// Embed texts from JSON lines or plain lines into JSON lines.
    Embed(commands::embed::EmbedArgs),
    /// Stream a JSON-lines file of signals to a running server.
    Ingest(commands::signals::IngestArgs),
    /// Find signals similar to a text on a running server.
    Search(commands::signals::SearchArgs),
    /// Cluster vectors from a file with HDBSCAN, offline.
    Cluster(commands::cluster::ClusterArgs),
    /// Ask a running server to re-cluster a brand's signals (for schedulers).
    Recluster(commands::trends::ReclusterArgs),
    /// Print a brand's trends from a running server.
    Trends(commands::trends::TrendsArgs),
    /// Copy the embedded store's collections into a Qdrant server or
    /// cluster (resumable; the same point ids).
    Migrate(commands::migrate::MigrateArgs),
    /// Inspect models.
    Models {
        #[command(subcommand)]
        command: commands::models::ModelsCommand,
    },
    /// Compare models × devices × lengths × batch sizes: speed, latency,
    /// memory, load time and quality on labelled texts (as `pulse-bench models`).
    Bench(Box<pulse_bench::models::ModelsArgs>),
}

/// `pulse serve`'s arguments alone, for merging in its `--config` file.
#[derive(Parser)]
#[command(name = "pulse serve")]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PULSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Embed(args) => {
            init_logging(LogFormat::Text);
            commands::embed::run(args)
        }
        Command::Ingest(args) => {
            init_logging(LogFormat::Text);
            commands::signals::ingest(args)
        }
        Command::Search(args) => {
            init_logging(LogFormat::Text);
            commands::signals::search(args)
        }
        Command::Cluster(args) => {
            init_logging(LogFormat::Text);
            commands::cluster::run(args)
        }
        Command::Recluster(args) => {
            init_logging(LogFormat::Text);
            commands::trends::recluster(args)
        }
        Command::Trends(args) => {
            init_logging(LogFormat::Text);
            commands::trends::trends(args)
        }
        Command::Migrate(args) => {
            init_logging(LogFormat::Text);
            commands::migrate::run(args)
        }
        Command::Models { command } => {
            init_logging(LogFormat::Text);
            commands::models::run(command)
        }
        Command::Bench(args) => {
            init_logging(LogFormat::Text);
            pulse_bench::models::run(*args).map(|()| ExitCode::SUCCESS)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pulse: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let args = if args.config.is_some() {
        // Re-parse `pulse serve`'s own arguments with the file's settings
        // filling what flags and environment leave open.
        let argv: Vec<OsString> = std::env::args_os().collect();
        let at = argv.iter().position(|a| a == "serve").unwrap_or(0);
        let mut own = vec![OsString::from("pulse serve")];
        own.extend(argv.into_iter().skip(at + 1));
        match parse_with_file::<ServeOnly>(own) {
            Ok(parsed) => parsed.args,
            Err(err) => match err.downcast::<clap::Error>() {
                Ok(clap_error) => clap_error.exit(),
                Err(other) => return Err(other),
            },
        }
    } else {
        args
    };
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = shutdown_signal()?;
        let server = pulse_server::Server::start(&args).await?;
        // Scripts and tests read the bound addresses from standard output;
        // a reader that has gone away must not take the server down.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "grpc listening on {}", server.grpc_addr);
        let _ = writeln!(stdout, "http listening on {}", server.http_addr);
        let _ = stdout.flush();
        server.run_until(stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Listens for SIGTERM and SIGINT from the moment it is called: a signal
/// that arrives before the server is ready still stops it gracefully
/// instead of killing it.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
