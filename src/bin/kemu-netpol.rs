//! `kemu-netpol`: the NetworkPolicy agent alone, a small binary so that every minion's
//! resident memory holds only the code this agent runs (`kemu netpol` is the same agent).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "kemu-netpol", version)]
struct Cli {
    #[arg(long, env = "KEMU_LOG", default_value = "warn")]
    log: String,
    #[command(flatten)]
    args: kemu::cli::netpol::AgentArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kemu::cli::init_log(&cli.log);
    match kemu::cli::netpol::run_agent(cli.args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
