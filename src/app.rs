//! Builds the application from the command line: loads and validates the configuration, sets up
//! telemetry, and runs the chosen command. Errors are reported here, once, with their chain.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{self, Config};

/// Exit status for "the command ran but the result is not clean" (incomplete listing, broken
/// audit chain, failed sweep).
pub const EXIT_INCOMPLETE: u8 = 1;
/// Exit status for a configuration or usage error.
pub const EXIT_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line: reported once, here.
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(config::default_config_path)
}

/// Loads the configuration; a bad one is a usage error reported with file and key.
pub fn load_config(path: &std::path::Path) -> Result<Config> {
    config::load(path).map_err(anyhow::Error::from)
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::CheckConfig => {
            let path = config_path(&cli);
            let config = load_config(&path)?;
            crate::telemetry::init(config.log.format).ok();
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", config::render_effective(&config));
            println!("# config hash: {}", config.hash);
            if std::io::stdout().is_terminal() {
                eprintln!("configuration OK: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(anyhow::anyhow!("this command is not available yet")).context("keysweep"),
    }
}
