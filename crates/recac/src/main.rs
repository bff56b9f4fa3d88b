//! The `recac` command: the operator, the agent and the tools around them.

mod config;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "recac",
    version,
    about = "Turns tickets into AI coding-agent Jobs on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition recac serves, as YAML.
    Crd,
    /// Print the version of this build.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match recac_api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("recac {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
