//! Who a pagestream session is for: Neon's tenant and timeline ids (sent in the
//! `pagestream_v3 <tenant> <timeline>` query) and the page source's system identifier (announced
//! by the server at startup). Together they are the `lfc::Binding` a backend binds its LFC to,
//! so that one cache never serves two timelines' or two clusters' pages.
//!
//! Owns: `NeonId` (32 hex digits either way), the system identifier's parameter name and its
//! parsing (zero is none). Builds no `lfc::Binding` itself (`client` does, from these), sends and
//! receives nothing, and imports nothing of this crate.

use std::fmt;
use std::str::FromStr;

/// The ParameterStatus in which the page server announces its page source's system identifier
/// (decimal, as `pg_controldata` prints it), next to `data_checksums`. A server that does not
/// send it (a Neon page server) has none, and its sessions bind an LFC without one.
pub const SYSTEM_IDENTIFIER_PARAM: &str = "system_identifier";

/// A Neon tenant or timeline id: 16 bytes, written as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NeonId(pub [u8; 16]);

impl NeonId {
    /// All zeros: the ids a client uses when none is given.
    pub const ZERO: NeonId = NeonId([0; 16]);
}

impl fmt::Display for NeonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for NeonId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: Option<Vec<u8>> = s.chars().map(|c| c.to_digit(16).map(|d| d as u8)).collect();
        match digits {
            Some(d) if d.len() == 32 => {
                let mut id = [0u8; 16];
                for (i, pair) in d.chunks_exact(2).enumerate() {
                    id[i] = pair[0] << 4 | pair[1];
                }
                Ok(NeonId(id))
            }
            _ => Err(format!(
                "invalid id {s:?}: expected 32 hex digits, e.g. 0123456789abcdef0123456789abcdef"
            )),
        }
    }
}

/// Parses the announced system identifier; None for anything but a non-zero decimal u64 (zero
/// is how the LFC records "none").
pub fn parse_system_identifier(value: &str) -> Option<u64> {
    value.trim().parse().ok().filter(|&id| id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_as_32_hex_digits() {
        let id: NeonId = "0123456789ABCDEF0123456789abcdef".parse().unwrap();
        assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
        assert_eq!("0".repeat(32).parse::<NeonId>().unwrap(), NeonId::ZERO);
        for bad in [
            "",
            "0123",
            &"g".repeat(32),
            &"0".repeat(33),
            "+1234567890abcdef0123456789abcde",
        ] {
            assert!(bad.parse::<NeonId>().is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_system_identifier("7318234567890123456"),
            Some(7_318_234_567_890_123_456)
        );
        assert_eq!(parse_system_identifier("0"), None);
        assert_eq!(parse_system_identifier("x"), None);
    }
}
