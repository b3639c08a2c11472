//! STUB
use super::*;
pub fn build(_opts: &BuildOptions, _progress: &crate::Progress, _cancel: &CancelFlag) -> crate::Result<BuildReport> { todo!() }
