//! STUB
use super::*;
pub fn extract(_opts: &ExtractOptions, _progress: &crate::Progress, _cancel: &CancelFlag) -> crate::Result<ExtractReport> { todo!() }
