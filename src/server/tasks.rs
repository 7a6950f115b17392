//! The server's background tasks: `queue.stats` events, registration
//! syncs, housekeeping (retention and the archive), and reload watching.
//!
//! Room: the switchboard's night shift. Each task holds the shared state
//! and wakes on its own period or signal.

use super::*;

/// `queue.stats` events: every `queue_stats_every` seconds, each queue
/// whose figures changed since it was last told (quiet queues say nothing,
/// so they do not push call events out of the backlog).
pub(super) async fn queue_stats(shared: Arc<Shared>) {
    let period = std::time::Duration::from_secs(shared.settings.admin.queue_stats_every);
    let mut ticker = tokio::time::interval(period);
    let mut told: HashMap<String, serde_json::Value> = HashMap::new();
    loop {
        ticker.tick().await;
        let (_, queues) = shared.acd.views().await;
        for q in queues {
            let figures = serde_json::json!(q);
            if told.get(&q.name) == Some(&figures) {
                continue;
            }
            let about = crate::events::About {
                queue: Some(q.name.clone()),
                ..Default::default()
            };
            shared
                .records
                .events()
                .publish("queue.stats", about, figures.clone());
            told.insert(q.name, figures);
        }
    }
}

/// Every half second, makes the registrations committed since durable
/// (they are committed without a sync, so a REGISTER storm does not wait
/// for the disk per request).
pub(super) async fn sync_registrations(store: crate::store::Store) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.sync_registrations()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cannot sync registrations"),
            Err(e) => tracing::error!(error = %e, "registration sync task failed"),
        }
    }
}

/// At start and hourly: deletes recordings past `[recording]
/// retention_days`, and moves whole days of records older than `[records]
/// keep_days` to the archive (each day logged as it goes).
pub(super) async fn housekeeping(shared: Arc<Shared>) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        let now = crate::clock::now_ms();
        let recording = &shared.settings.recording;
        if recording.enabled && recording.retention_days > 0 {
            let days = recording.retention_days;
            let cutoff = now.saturating_sub(days.saturating_mul(86_400_000));
            let store = shared.store.clone();
            match tokio::task::spawn_blocking(move || store.expire_recordings(cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(deleted = n, days, "expired recordings deleted"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot expire recordings"),
                Err(e) => tracing::error!(error = %e, "recording expiry task failed"),
            }
        }
        let keep_days = shared.settings.records.keep_days;
        if keep_days > 0 {
            let cutoff = now.saturating_sub(keep_days.saturating_mul(86_400_000));
            let store = shared.store.clone();
            let archived = tokio::task::spawn_blocking(move || {
                store.archive_before(cutoff, &mut |d| {
                    tracing::info!(
                        kind = d.kind.name(),
                        day = crate::store::archive::date_of(d.day),
                        removed = d.removed,
                        written = d.written,
                        keep_days,
                        "a day of records moved to the archive"
                    )
                })
            })
            .await;
            match archived {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot archive old records; they stay in the database")
                }
                Err(e) => tracing::error!(error = %e, "records archive task failed"),
            }
        }
    }
}

/// Reloads on SIGHUP and when anything under `flows_dir` or `sounds_dir`
/// changes (after a 300 ms quiet period, so an editor's burst of writes is
/// one reload).
pub fn watch_reloads(shared: Arc<Shared>) -> anyhow::Result<()> {
    use notify::Watcher;
    let (tx, mut rx) = mpsc::channel::<&'static str>(8);
    let file_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = file_tx.try_send("file change");
        }
    })?;
    for dir in [&shared.settings.flows_dir, &shared.settings.sounds_dir] {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "not watching for changes (SIGHUP and `yihaotong reload` still work)");
        }
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send("SIGHUP").await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let _watcher = watcher; // lives as long as this task
        while let Some(why) = rx.recv().await {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            tracing::info!(why, "reloading flows and prompts");
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload()).await;
        }
    });
    Ok(())
}

/// How often histogram samples are folded into their buckets.
const METERS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Every few seconds, folds the histograms' samples into their buckets
/// ([`crate::meters::upkeep`]), so memory does not depend on whether
/// anyone scrapes `/metrics`.
pub(super) async fn meters_upkeep() {
    let mut tick = tokio::time::interval(METERS_UPKEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::meters::upkeep();
    }
}
