//! The CNI error result: what a plugin prints on stdout when it fails.

use serde_json::{json, Value};

/// Incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Invalid or missing CNI_* environment variables.
pub const INVALID_ENV: u32 = 4;
/// I/O failure.
pub const IO_FAILURE: u32 = 5;
/// The network configuration on stdin could not be decoded.
pub const DECODE: u32 = 6;
/// The network configuration is invalid.
pub const INVALID_CONFIG: u32 = 7;
/// Try again later: the weft agent is not ready yet.
pub const TRY_AGAIN_LATER: u32 = 11;
/// Anything else (the code libcni's skeleton uses for plain errors).
pub const INTERNAL: u32 = 999;

/// A CNI error (`{"cniVersion","code","msg","details"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Reads an error a delegate plugin printed; `None` if `stdout` is not one.
    pub fn from_plugin_output(stdout: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(stdout).ok()?;
        let code = u32::try_from(v.get("code")?.as_u64()?).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Some(Self {
            code,
            msg: text("msg"),
            details: text("details"),
        })
    }

    /// The JSON a runtime expects on stdout, in the caller's `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_in_the_callers_version_and_omits_empty_details() {
        let e = CniError::new(TRY_AGAIN_LATER, "not yet");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "not yet"})
        );
        let e = e.with_details("because");
        assert_eq!(e.to_json("1.0.0")["details"], "because");
    }

    #[test]
    fn reads_a_delegate_error_and_rejects_anything_else() {
        let out = br#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"d"}"#;
        assert_eq!(
            CniError::from_plugin_output(out),
            Some(CniError::new(INVALID_CONFIG, "bad").with_details("d"))
        );
        assert_eq!(CniError::from_plugin_output(b"panic: oops"), None);
        assert_eq!(CniError::from_plugin_output(br#"{"msg":"no code"}"#), None);
    }
}
