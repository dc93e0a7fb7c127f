//! The `keysweep` binary: everything lives in the library (`keysweep::app`).

fn main() -> std::process::ExitCode {
    keysweep::app::main()
}
