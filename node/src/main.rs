//! The `dccf-node` binary: all logic lives in the library (`dccf_node::cli`).

fn main() -> std::process::ExitCode {
    dccf_node::cli::main()
}
