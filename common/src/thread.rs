//! Threads with a runtime of their own, for work that blocks (SQLite) or
//! whose CPU time must be told apart from the rest (simulators, the API).

/// Runs the future `make` returns on a thread of its own, named `name`,
/// with a single-threaded tokio runtime.
pub fn spawn_on_own_runtime<F, Fut>(
    name: &str,
    make: F,
) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(thread.clone())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(make()),
                Err(e) => tracing::error!(thread, error = %e, "cannot start a runtime"),
            }
        })
}
