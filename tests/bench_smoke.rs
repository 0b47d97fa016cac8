//! The reconcile benchmark still works: run on a small namespace, it ends with every phone Ready.
//! The figures of so small a run mean nothing; `cargo bench --bench reconcile` measures.

#[path = "../operator/benches/reconcile.rs"]
#[allow(dead_code)] // the benchmark's own `main`, which `cargo bench` runs
mod reconcile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_benchmark_brings_every_phone_of_a_small_namespace_to_ready() {
    if let Err(e) = reconcile::run(300).await {
        panic!("bench reconcile on 300 phones: {e}");
    }
}
