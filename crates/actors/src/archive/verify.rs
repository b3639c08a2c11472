//! STUB
use super::*;
use std::path::Path;
pub fn verify(_path: &Path, _expected_sha256: Option<&str>, _threads: usize, _progress: &crate::Progress, _cancel: &CancelFlag) -> crate::Result<VerifyReport> { todo!() }
pub fn read_info(_path: &Path) -> crate::Result<ArchiveInfo> { todo!() }
