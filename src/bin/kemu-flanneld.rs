//! `kemu-flanneld`: the overlay agent alone, a small binary so that every minion's resident
//! memory holds only the code this agent runs (`kemu flanneld` is the same agent).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "kemu-flanneld", version)]
struct Cli {
    #[arg(long, env = "KEMU_LOG", default_value = "warn")]
    log: String,
    #[command(flatten)]
    args: kemu::cli::flanneld::FlanneldArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    kemu::cli::init_log(&cli.log);
    match kemu::cli::flanneld::run_cli(cli.args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
