//! The `deberta` command-line tool.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Mesa's Vulkan drivers complain on every start without it; a temporary directory is
        // what they need it for.
        // SAFETY: first statement of `main`, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    // A panic is a bug; report it in one line rather than with a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("internal error (please report): {msg}{place}");
    }));
    let outcome = deberta_host::cli::run();
    let world = deberta_host::distributed::World::current();
    match outcome {
        Ok(()) => {
            deberta_host::distributed::finalize();
            ExitCode::SUCCESS
        }
        Err(e) if world.size() > 1 => {
            // One line from the process that saw it, then the whole job ends (no rank waits
            // forever on this one).
            eprintln!("error (rank {} of {}): {e}", world.rank(), world.size());
            world.abort_if_parallel();
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            deberta_host::distributed::finalize();
            ExitCode::FAILURE
        }
    }
}
