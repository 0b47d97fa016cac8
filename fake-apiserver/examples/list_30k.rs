//! Quick check of the server's speed at the benchmark's scale: 30 000 Phones stored, listed in one
//! request, listed in pages of 500 (kube's watcher default), and watched from "0".
//!
//! `cargo run --release -p fake-apiserver --example list_30k`

use std::time::Instant;

use fake_apiserver::FakeApiServer;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchEvent, WatchParams};
use serde_json::json;

const PHONES: usize = 30_000;

#[tokio::main]
async fn main() {
    let server = FakeApiServer::start().await;
    let started = Instant::now();
    for index in 0..PHONES {
        let phone = json!({
            "apiVersion": "callguard.io/v1alpha1", "kind": "Phone",
            "metadata": {"name": format!("sep{index:012x}"), "namespace": "voice", "labels": {"callguard.io/cluster": "cucm1"}},
            "spec": {"macAddress": format!("{index:012x}"), "model": "8845", "protocol": "SIP", "directoryNumbers": [format!("{}", 1000 + index)],
                     "phoneSecurityProfileRef": {"name": "encrypted-8845"}, "description": "a phone of the benchmark cluster"},
            "status": {"lscState": "Installed", "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]},
        });
        if let Err(error) = server.insert(phone) {
            eprintln!("insert failed: {error}");
            return;
        }
    }
    println!("insert {PHONES} phones: {:?}", started.elapsed());

    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("callguard.io", "v1alpha1", "Phone"), "phones");
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "voice", &resource);

    let started = Instant::now();
    let request = http::Request::get(format!("{}/apis/callguard.io/v1alpha1/namespaces/voice/phones", server.url()))
        .body(Vec::new())
        .expect("request");
    let text = server.client().request_text(request).await.expect("raw list");
    println!("one list of {PHONES} phones as {} bytes, not decoded: {:?}", text.len(), started.elapsed());

    let started = Instant::now();
    let list = api.list(&ListParams::default()).await.expect("list");
    println!("one list of {} phones through kube: {:?}", list.items.len(), started.elapsed());

    let started = Instant::now();
    let mut params = ListParams::default().limit(500);
    let mut count = 0;
    loop {
        let page = api.list(&params).await.expect("page");
        count += page.items.len();
        match page.metadata.continue_ {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    println!("paged list (500) of {count} phones through kube: {:?}", started.elapsed());

    let started = Instant::now();
    let mut stream = api.watch(&WatchParams::default(), "0").await.expect("watch").boxed();
    let mut added = 0;
    while added < PHONES {
        match stream.next().await {
            Some(Ok(WatchEvent::Added(_))) => added += 1,
            other => {
                eprintln!("unexpected watch item: {:?}", other.map(|event| event.map(|_| ())));
                return;
            }
        }
    }
    println!("watch from 0 delivering {added} ADDED events through kube: {:?}", started.elapsed());
}
