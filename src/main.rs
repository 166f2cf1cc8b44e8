use amazon_ecs_init::cli::Cli;
use clap::Parser;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help is not an error; anything else is a usage error (exit 1, like ecs-init).
            let code = if err.use_stderr() { 1 } else { 0 };
            let _ = err.print();
            std::process::exit(code);
        }
    };
    std::process::exit(amazon_ecs_init::run(cli.action));
}
