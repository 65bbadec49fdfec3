//! The token manager with the fake source, on tokio's paused clock.

use std::sync::atomic::Ordering;

use super::source::FakeTokenSource;
use super::*;

#[derive(Default)]
struct Events(Mutex<Vec<(String, String)>>);

impl EventSink for Events {
    fn report(&self, object: &ObjectRef, _: EventType, reason: &str, _: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((object.name.clone(), reason.to_string()));
    }
}

fn pod(uid: &str) -> PodRef {
    PodRef {
        uid: uid.into(),
        namespace: "shop".into(),
        name: format!("web-{uid}"),
    }
}

struct World {
    source: Arc<FakeTokenSource>,
    events: Arc<Events>,
    tokens: TokenManager,
    root: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn world(name: &str, config: TokenConfig) -> World {
    let root = std::env::temp_dir().join(format!("xds-token-mgr-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let source = Arc::new(FakeTokenSource::default());
    let events = Arc::new(Events::default());
    let tokens = TokenManager::new(
        source.clone(),
        TokenFiles {
            root: root.clone(),
            owner: None,
        },
        config,
        events.clone(),
        None,
    );
    World {
        source,
        events,
        tokens,
        root,
    }
}

fn token_in(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join(files::TOKEN_FILE)).unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn an_enabled_pod_gets_a_token_and_keeps_it_until_renewal() {
    let w = world("get", TokenConfig::default());
    w.tokens.sync(&[(pod("a"), "web".into())]).await;
    let dir = w.tokens.ensure(&pod("a")).await.expect("token");
    assert!(token_in(&dir).contains("Bearer fake-1-shop-web-a"));
    // Cached: no second request while valid.
    w.tokens.ensure(&pod("a")).await.expect("token");
    w.tokens.sync(&[(pod("a"), "web".into())]).await;
    assert_eq!(w.source.count(), 1);
    assert!(matches!(
        w.tokens.ensure(&pod("unknown")).await,
        Err(TokenError::Unknown(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn tokens_are_renewed_at_four_fifths_of_their_lifetime_or_the_forced_period() {
    let w = world("renew", TokenConfig::default());
    w.tokens.sync(&[(pod("a"), "web".into())]).await;
    let next = w.tokens.renew_due().await.expect("due");
    assert_eq!(next - Instant::now(), Duration::from_secs(2880));
    tokio::time::advance(Duration::from_secs(2879)).await;
    w.tokens.renew_due().await;
    assert_eq!(w.source.count(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    w.tokens.renew_due().await;
    assert_eq!(w.source.count(), 2);
    let dir = w.tokens.ensure(&pod("a")).await.expect("token");
    assert!(token_in(&dir).contains("fake-2"));

    let forced = world(
        "forced",
        TokenConfig {
            lifetime: Duration::from_secs(600),
            renew_every: Some(Duration::from_secs(20)),
        },
    );
    forced.tokens.sync(&[(pod("b"), "web".into())]).await;
    for n in 2..=4 {
        tokio::time::advance(Duration::from_secs(20)).await;
        forced.tokens.renew_due().await;
        assert_eq!(forced.source.count(), n);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_an_event_then_retries_with_backoff_and_a_valid_token_is_kept() {
    let w = world("fail", TokenConfig::default());
    w.source.fail(true);
    w.tokens.sync(&[(pod("a"), "web".into())]).await;
    assert_eq!(
        w.events.0.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        vec![("web-a".to_string(), EVENT_REASON.to_string())]
    );
    // In backoff: the start step is refused without asking the API again.
    match w.tokens.ensure(&pod("a")).await {
        Err(TokenError::Backoff { failures: 1, .. }) => {}
        other => panic!("expected a backoff, got {other:?}"),
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(w.tokens.ensure(&pod("a")).await.is_err());
    match w.tokens.ensure(&pod("a")).await {
        Err(TokenError::Backoff {
            failures: 2,
            retry_in,
            ..
        }) => assert_eq!(retry_in, Duration::from_secs(2)),
        other => panic!("expected a longer backoff, got {other:?}"),
    }
    w.source.fail(false);
    tokio::time::advance(Duration::from_secs(2)).await;
    let dir = w.tokens.ensure(&pod("a")).await.expect("token after the backoff");
    assert!(token_in(&dir).contains("Bearer fake-1"));

    // A failed renewal keeps the valid token in place (and the sidecar working).
    w.source.fail(true);
    tokio::time::advance(Duration::from_secs(2880)).await;
    w.tokens.renew_due().await;
    assert!(w.tokens.ensure(&pod("a")).await.is_ok());
    assert!(token_in(&dir).contains("Bearer fake-1"));
    w.source.fail(false);
    tokio::time::advance(Duration::from_secs(1)).await;
    w.tokens.renew_due().await;
    assert!(token_in(&dir).contains("Bearer fake-2"));
    assert_eq!(w.source.issued.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_pod_no_longer_enabled_loses_its_token_and_orphans_are_removed() {
    let w = world("remove", TokenConfig::default());
    w.tokens
        .sync(&[(pod("a"), "web".into()), (pod("b"), "web".into())])
        .await;
    let a = w.tokens.ensure(&pod("a")).await.expect("a");
    let b = w.tokens.ensure(&pod("b")).await.expect("b");
    // A directory a previous agent left.
    let orphan = TokenFiles {
        root: w.root.clone(),
        owner: None,
    }
    .write(&pod("old"), "x")
    .expect("orphan");
    w.tokens.sync(&[(pod("b"), "web".into())]).await;
    assert!(!a.exists());
    assert!(b.exists());
    assert!(!orphan.exists());
    assert!(matches!(
        w.tokens.ensure(&pod("a")).await,
        Err(TokenError::Unknown(_))
    ));
}
