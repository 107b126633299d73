//! `cvmfs-oci`: turn container images and directory trees into signed CernVM-FS repositories.

mod args;
mod commands;
mod demo;
mod output;
mod paths;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    let out = output::Output {
        json: cli.global.json,
    };
    match commands::run(cli, out) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            // One line: the chain of causes, joined, so scripts can grep it.
            let line = format!("{err:#}").replace('\n', " ");
            if out.json {
                println!(
                    "{}",
                    serde_json::json!({ "action": "error", "error": line })
                );
            }
            eprintln!("cvmfs-oci: error: {line}");
            std::process::exit(1);
        }
    }
}
