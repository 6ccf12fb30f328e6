//! `firehose-broker` binary: flags, logging, signals. Everything else is in
//! the library.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use firehose::report::error_chain;
use firehose_broker::{check_private, Args, Broker, Command, PasswordFile, RunArgs};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_logging(args.run.verbose) {
        eprintln!("firehose-broker: {}", error_chain(e.as_ref()));
        return ExitCode::from(2);
    }
    let res = match args.command {
        Some(Command::Passwd { file, user }) => set_password(&file, &user),
        None => run(args.run),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firehose-broker: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr. `FIREHOSE_LOG` (an EnvFilter) decides what, and one
/// that does not parse is an error, not silently ignored. By default: info,
/// without each client's connect/disconnect (`--verbose` adds them) and
/// without rustls' per-handshake warnings (clients that connect by IP
/// address send no server name; that is not worth a line each).
fn init_logging(verbose: bool) -> Result<()> {
    let default = if verbose {
        "info,rustls=error".to_owned()
    } else {
        format!("info,rustls=error,{}=warn", firehose_broker::CLIENTS)
    };
    Ok(firehose::logging::init(&default)?)
}

fn set_password(file: &std::path::Path, user: &str) -> Result<()> {
    let mut pf = if file.exists() {
        check_private(file)?;
        PasswordFile::load(file)?
    } else {
        PasswordFile::default()
    };
    let password = if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password(format!("Password for {user}: "))?;
        let b = rpassword::prompt_password("Again: ")?;
        if a != b {
            bail!("passwords do not match");
        }
        a
    } else {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        bail!("empty password refused");
    }
    pf.set(user, &password)?;
    pf.save(file)?;
    eprintln!(
        "firehose-broker: password for {user:?} written to {}",
        file.display()
    );
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let cfg = args.to_config().context("configuration")?;
    if args.print_config {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    if args.check_config {
        Broker::check(&cfg)?;
        println!("configuration OK");
        return Ok(());
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.threads > 0 {
        rt.worker_threads(cfg.threads);
    }
    let rt = rt
        .enable_all()
        .thread_name("firehose")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let broker = Broker::start(cfg).await.context("starting the broker")?;
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        loop {
            tokio::select! {
                _ = hup.recv() => { let _ = broker.reload(); }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        broker.shutdown().await;
        Ok(())
    })
}
