//! Start-up costs of the embedded component in this build of the host:
//! compiling it (no cache), loading it from the compiled-component cache,
//! instantiating it from the pre-linked `InstancePre`, and a first call.
//! Run in release by `cargo xtask bench-start`.

use batchgen::local::LocalModel;
use batchgen::outbound::Outbound;
use batchgen::plugin::sandbox::Limits;
use batchgen::plugin::{EMBEDDED_COMPONENT, Plugin};
use std::time::Instant;

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let cache = tempfile::tempdir().expect("a temporary cache directory");
    let started = Instant::now();
    let cold = Plugin::new(EMBEDDED_COMPONENT, Some(cache.path()), Limits::default()).expect("the component compiles");
    let cold_ms = millis(started);
    drop(cold);
    let started = Instant::now();
    let plugin =
        Plugin::new(EMBEDDED_COMPONENT, Some(cache.path()), Limits::default()).expect("the cached component loads");
    let warm_ms = millis(started);

    const INSTANCES: u32 = 500;
    let started = Instant::now();
    for _ in 0..INSTANCES {
        let session = plugin.instantiate(Outbound::deny_all(), LocalModel::Unavailable).await.expect("instantiates");
        drop(session);
    }
    let instantiate_ms = millis(started) / f64::from(INSTANCES);
    let mut session = plugin.instantiate(Outbound::deny_all(), LocalModel::Unavailable).await.expect("instantiates");
    let started = Instant::now();
    let models = session.list_models().await.expect("list-models answers");
    let call_ms = millis(started);

    println!("component size          {:.0} KiB", EMBEDDED_COMPONENT.len() as f64 / 1024.0);
    println!("cold start (compile)    {cold_ms:.1} ms");
    println!("warm start (cache)      {warm_ms:.2} ms");
    println!("instantiate (mean/{INSTANCES})  {instantiate_ms:.3} ms (includes a fresh HTTP client per instance)");
    println!("first call (list-models, {} models)  {call_ms:.3} ms", models.len());
}
