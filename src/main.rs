use clap::Parser;

fn main() -> std::process::ExitCode {
    loam::cli::main(loam::cli::Cli::parse())
}
