use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rlhf_operator::telemetry::init();
    match rlhf_operator::cli::main(rlhf_operator::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
