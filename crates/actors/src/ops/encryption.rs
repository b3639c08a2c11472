//! `encryption check`: proves that the identity kept off the host opens what the host writes.

use nuwax_store::BackupStatus;

use super::{BackupEntry, Ctx};
use crate::actors::store_actor::StoreMsg;
use crate::archive::VerifyReport;
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Decrypts and verifies the newest encrypted backup whose archive is here with the given
/// key (`--identity`/`--passphrase-file`/`[encryption] identity_file`). No key: exit 2; no
/// encrypted backup yet: exit 3 saying how to make one; a key that does not open it: the
/// report's problems (exit 4).
pub(crate) async fn check(ctx: &Ctx, progress: Progress) -> Result<(BackupEntry, VerifyReport)> {
    if ctx.settings.decrypt_with.is_none() {
        return Err(Error::KeyRequired(
            "encryption check needs the key to test: pass --identity FILE (the age identity or ssh private key whose public key is in [encryption] recipients) or --passphrase-file FILE".into(),
        ));
    }
    let rows = ctx.store(StoreMsg::ListBackups).await?;
    let newest = rows
        .into_iter()
        .map(BackupEntry::from_record)
        .filter(|e| e.encrypted && e.file_exists && e.record.status == BackupStatus::Completed)
        .max_by_key(|e| (e.record.created_at, e.record.id));
    let Some(newest) = newest else {
        return Err(Error::Refused(
            "there is no encrypted backup here to test; set [encryption] recipients (and scope = \"all\" for local archives), run `nuwax-cli backup`, then run this again".into(),
        ));
    };
    super::maintenance::verify(ctx, newest.record.id, progress).await
}
