//! Watches through kube: from a resourceVersion, 410 for a compacted one, bookmarks, and kube-runtime's
//! watcher and reflector (list-then-watch and streaming lists).

mod common;

use std::time::Duration;

use common::{phone, phone_json, phone_resource, phones};
use fake_apiserver::{FakeApiServer, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

async fn next_event<S>(stream: &mut S) -> WatchEvent<DynamicObject>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .expect("a decodable event")
}

fn describe(event: &WatchEvent<DynamicObject>) -> String {
    match event {
        WatchEvent::Added(object) => format!("ADDED {}", object.metadata.name.clone().unwrap_or_default()),
        WatchEvent::Modified(object) => format!("MODIFIED {}", object.metadata.name.clone().unwrap_or_default()),
        WatchEvent::Deleted(object) => format!("DELETED {}", object.metadata.name.clone().unwrap_or_default()),
        WatchEvent::Bookmark(bookmark) => format!("BOOKMARK {}", bookmark.metadata.resource_version),
        WatchEvent::Error(status) => format!("ERROR {}", status.code),
    }
}

#[tokio::test]
async fn watch_from_a_resource_version_sees_exactly_later_events() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    api.create(&PostParams::default(), &phone("before", "7941")).await.unwrap();
    let version = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    api.create(&PostParams::default(), &phone("after", "7941")).await.unwrap();
    api.patch("before", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": "7961"}}))).await.unwrap();
    api.delete("after", &DeleteParams::default()).await.unwrap();

    let mut stream = api.watch(&WatchParams::default().timeout(10), &version).await.unwrap().boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next_event(&mut stream).await));
    }
    assert_eq!(seen, ["ADDED after", "MODIFIED before", "DELETED after"]);

    // Live events follow the replayed ones, in order.
    api.create(&PostParams::default(), &phone("live", "7941")).await.unwrap();
    assert_eq!(describe(&next_event(&mut stream).await), "ADDED live");
    // Objects of another namespace are not in this namespace's watch.
    phones(server.client(), "other").create(&PostParams::default(), &phone("elsewhere", "7941")).await.unwrap();
    api.delete("live", &DeleteParams::default()).await.unwrap();
    assert_eq!(describe(&next_event(&mut stream).await), "DELETED live");
}

#[tokio::test]
async fn watch_without_a_version_starts_with_the_current_state() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    api.create(&PostParams::default(), &phone("a", "7941")).await.unwrap();
    api.create(&PostParams::default(), &phone("b", "7941")).await.unwrap();
    let mut stream = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert_eq!(describe(&next_event(&mut stream).await), "ADDED a");
    assert_eq!(describe(&next_event(&mut stream).await), "ADDED b");
}

#[tokio::test]
async fn label_selected_watch_sees_objects_enter_and_leave() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let version = server.resource_version().to_string();
    let mut stream = api.watch(&WatchParams::default().labels("site=a"), &version).await.unwrap().boxed();
    api.create(&PostParams::default(), &phone("p", "7941")).await.unwrap();
    api.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"site": "a"}}}))).await.unwrap();
    api.patch("p", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"site": "b"}}}))).await.unwrap();
    assert_eq!(describe(&next_event(&mut stream).await), "ADDED p", "starting to match is ADDED");
    assert_eq!(describe(&next_event(&mut stream).await), "DELETED p", "ceasing to match is DELETED");
}

#[tokio::test]
async fn too_old_resource_version_is_410_expired() {
    let server = FakeApiServer::start_with(Options { history_limit: 3, ..Options::default() }).await;
    let api = phones(server.client(), "default");
    api.create(&PostParams::default(), &phone("p", "7941")).await.unwrap();
    let old = server.resource_version().to_string();
    for model in ["7905", "7911", "7912", "7940", "7960"] {
        api.patch("p", &PatchParams::default(), &Patch::Merge(json!({"spec": {"model": model}}))).await.unwrap();
    }
    let mut stream = api.watch(&WatchParams::default(), &old).await.unwrap().boxed();
    match next_event(&mut stream).await {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {}", describe(&other)),
    }
    assert!(stream.next().await.is_none(), "the stream ends after the ERROR event");

    // A version inside the history still works.
    let recent = (server.resource_version() - 1).to_string();
    let mut stream = api.watch(&WatchParams::default(), &recent).await.unwrap().boxed();
    assert_eq!(describe(&next_event(&mut stream).await), "MODIFIED p");
}

#[tokio::test]
async fn bookmarks_carry_the_current_resource_version() {
    let server = FakeApiServer::start_with(Options { bookmark_interval: Duration::from_millis(50), ..Options::default() }).await;
    let api = phones(server.client(), "default");
    api.create(&PostParams::default(), &phone("p", "7941")).await.unwrap();
    let version = server.resource_version();
    let mut stream = api.watch(&WatchParams::default(), &version.to_string()).await.unwrap().boxed();
    // Something in another resource moves the global resourceVersion on.
    let maps: Api<ConfigMap> = Api::default_namespaced(server.client());
    maps.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap()).await.unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Bookmark(bookmark) => assert_eq!(bookmark.metadata.resource_version, (version + 1).to_string()),
        other => panic!("expected a BOOKMARK, got {}", describe(&other)),
    }
}

#[tokio::test]
async fn watch_ends_at_its_timeout() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    let mut stream = api.watch(&WatchParams::default().timeout(1), "0").await.unwrap().boxed();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the watch ends by its timeout");
    assert!(ended.is_none());
}

/// Drives a reflector over Phones while objects change, and checks its store converges.
async fn reflector_follows_changes(config: watcher::Config) {
    let server = FakeApiServer::start_with(Options { bookmark_interval: Duration::from_millis(100), ..Options::default() }).await;
    let api = phones(server.client(), "default");
    for index in 0..5 {
        api.create(&PostParams::default(), &phone(&format!("seed-{index}"), "7941")).await.unwrap();
    }
    let writer = reflector::store::Writer::new(phone_resource());
    let reader = writer.as_reader();
    let events = watcher(api.clone(), config).default_backoff().reflect(writer).applied_objects();
    let driver = tokio::spawn(async move { events.try_for_each(|_| async { Ok(()) }).await });
    tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready()).await.expect("the reflector becomes ready").unwrap();
    assert_eq!(reader.state().len(), 5);

    api.create(&PostParams::default(), &phone("new", "7941")).await.unwrap();
    api.patch("seed-0", &PatchParams::apply("test"), &Patch::Apply(phone_json("seed-0", "7961"))).await.unwrap();
    api.delete("seed-1", &DeleteParams::default()).await.unwrap();

    let converged = async {
        loop {
            let names: Vec<String> = reader.state().iter().map(|object| object.metadata.name.clone().unwrap()).collect();
            let model =
                reader.find(|object| object.metadata.name.as_deref() == Some("seed-0")).map(|object| object.data["spec"]["model"].clone());
            if names.len() == 5
                && names.contains(&"new".to_string())
                && !names.contains(&"seed-1".to_string())
                && model == Some(json!("7961"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), converged).await.expect("the reflector follows create, update and delete");
    driver.abort();
}

#[tokio::test]
async fn watcher_and_reflector_with_the_default_list_then_watch() {
    reflector_follows_changes(watcher::Config::default()).await;
}

#[tokio::test]
async fn watcher_and_reflector_with_small_pages() {
    reflector_follows_changes(watcher::Config::default().page_size(2)).await;
}

#[tokio::test]
async fn watcher_and_reflector_with_streaming_lists() {
    reflector_follows_changes(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn metadata_only_list_and_watch() {
    let server = FakeApiServer::start().await;
    let api = phones(server.client(), "default");
    api.create(&PostParams::default(), &phone("p", "7941")).await.unwrap();
    let listed = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.name.as_deref(), Some("p"));
    let mut stream = api.watch_metadata(&WatchParams::default(), "0").await.unwrap().boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    match first {
        WatchEvent::Added(partial) => {
            assert_eq!(partial.metadata.name.as_deref(), Some("p"));
            assert_eq!(partial.types.unwrap().kind, "PartialObjectMetadata");
        }
        _ => panic!("expected ADDED"),
    }
}
