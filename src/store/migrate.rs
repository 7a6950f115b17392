//! The one-shot move from sled to redb.
//!
//! Room: the cellar stairs. yihaotong kept its database in sled (a folder,
//! `data_dir/db/`) until the store moved to redb (one file,
//! `data_dir/db.redb`; BENCHMARKS.md "A year on one machine" says why).
//! [`from_sled`] runs at every open and does nothing unless that folder is
//! there: it copies every tree, key for key, into the redb file, then sets
//! the folder aside as `db.sled-migrated-UNIXSECONDS`. It touches only
//! those paths; only [`super::Store`] calls it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use redb::TableHandle;

use super::{
    db_path, insert_chunk, open_redb, remove_if_there, Tree, CALLBACKS, CALLBACK_SEQ, META, TREES,
};

/// Migrates a sled database under `data_dir`, if there is one; where the
/// sled folder went. A crash part-way leaves the sled folder as it was
/// (the copy is built under another name and renamed when whole), so the
/// next open starts again.
pub(super) fn from_sled(data_dir: &Path, cache_mb: u64) -> anyhow::Result<Option<PathBuf>> {
    let old = data_dir.join("db");
    if !old.join("conf").exists() {
        return Ok(None);
    }
    let target = db_path(data_dir);
    if !target.exists() {
        copy(&old, &target, cache_mb).with_context(|| {
            format!(
                "cannot migrate the sled database {} to {}",
                old.display(),
                target.display()
            )
        })?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = data_dir.join(format!("db.sled-migrated-{now}"));
    std::fs::rename(&old, &aside).with_context(|| {
        format!(
            "cannot move the migrated sled database {} aside",
            old.display()
        )
    })?;
    std::fs::File::open(data_dir)?.sync_all()?;
    tracing::warn!(
        sled = %aside.display(),
        redb = %target.display(),
        "the sled database was migrated to redb; the sled folder is kept and may be deleted once the server runs well"
    );
    Ok(Some(aside))
}

/// Copies every tree of the sled database at `old` into a new redb file at
/// `target`, with progress in the log.
fn copy(old: &Path, target: &Path, cache_mb: u64) -> anyhow::Result<()> {
    let sled_db = sled::Config::new()
        .path(old)
        .cache_capacity(cache_mb.saturating_mul(1 << 20))
        .open()?;
    let staging = target.with_file_name("db.redb.migrating");
    remove_if_there(&staging)?;
    let db = open_redb(&staging, cache_mb)?;
    tracing::info!(sled = %old.display(), "migrating the sled database to redb");
    let mut chunk: Vec<(Tree, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut copied = 0u64;
    let mut next_callback = 1u64;
    for tree in TREES {
        let callbacks = tree.name() == CALLBACKS.name();
        for kv in sled_db.open_tree(tree.name())?.iter() {
            let (k, v) = kv?;
            if callbacks {
                if let Ok(id) = <[u8; 8]>::try_from(k.as_ref()) {
                    next_callback = next_callback.max(u64::from_be_bytes(id).saturating_add(1));
                }
            }
            chunk.push((tree, k.to_vec(), v.to_vec()));
            copied += 1;
            if chunk.len() == 10_000 {
                // Made durable by the last commit.
                insert_chunk(&db, &mut chunk, redb::Durability::None)?;
            }
            if copied % 100_000 == 0 {
                tracing::info!(copied, "migrating the sled database to redb");
            }
        }
    }
    // Callback ids go on past every id sled handed out.
    next_callback = next_callback.max(sled_db.generate_id()?);
    chunk.push((
        META,
        CALLBACK_SEQ.to_vec(),
        next_callback.to_be_bytes().to_vec(),
    ));
    insert_chunk(&db, &mut chunk, redb::Durability::Immediate)?;
    drop(db);
    std::fs::rename(&staging, target)?;
    tracing::info!(copied, "the sled database was copied to redb");
    Ok(())
}
