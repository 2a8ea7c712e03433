use std::process::ExitCode;

fn main() -> ExitCode {
    masker_agent::cli::main()
}
