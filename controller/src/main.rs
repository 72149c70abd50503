//! The `tollgate` binary.

use clap::Parser;
use tollgate::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Validate {
            config_flag,
            config,
        } => {
            let path = config.unwrap_or(config_flag);
            tollgate::cli::validate::run(&path, &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Schema { accounts } => {
            tollgate::cli::validate::schema(accounts, &mut std::io::stdout())
        }
    };
    std::process::exit(code);
}
