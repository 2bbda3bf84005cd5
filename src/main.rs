//! The `pcmcast` binary: parses the command line, binds the port, installs the signal handler
//! and runs the library. Errors print their whole cause chain on one line and exit non-zero.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pcmcast::config::{Action, Cli, ServeArgs};
use pcmcast::{Pcmcast, Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    pcmcast::memory::use_one_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version: print to stdout and succeed.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!(
                "pcmcast: error: {} (see pcmcast --help)",
                first_line(&error)
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&anyhow::Error::new(error).context("cannot start the async runtime"));
        }
    };
    let result = match cli.into_action() {
        Action::Serve(args) => runtime.block_on(serve(*args)),
        Action::ListDevices => list_devices(),
    };
    // Streams that outlived the grace period are dropped here instead of being waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// clap's message without its `error:` prefix and the usage hint that follows it.
fn first_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("pcmcast: error: {error:#}");
    ExitCode::FAILURE
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    #[cfg(unix)]
    raise_open_file_limit();
    let settings = Settings::try_from(args)?;
    let bind = settings.bind;
    let pcmcast = Pcmcast::open(settings)?;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!("listening on http://{address}/");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    pcmcast.run(listener, shutdown).await?;
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: every listener is a socket, and the
/// usual soft limit (1024) would refuse connections long before the hub is full.
#[cfg(unix)]
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to write and setrlimit to read.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, "cannot read the open-file limit");
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, soft, hard = limit.rlim_max, "cannot raise the open-file limit");
        return;
    }
    tracing::debug!(
        from = soft,
        to = limit.rlim_cur,
        "open-file limit raised to the hard limit"
    );
}

/// Prints every input device: id and name, default configuration, supported configurations.
fn list_devices() -> anyhow::Result<()> {
    let devices = pcmcast::source::capture::list_devices()?;
    if devices.is_empty() {
        println!("no input devices found");
    }
    for device in devices {
        let default = if device.is_default { "  [default]" } else { "" };
        println!("{}{default}", device.label);
        println!("    default:   {}", device.default_config);
        for range in device.supported {
            println!("    supports:  {range}");
        }
    }
    Ok(())
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops pcmcast");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
