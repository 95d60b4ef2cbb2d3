//! The JSON Docker sends a network and IPAM plugin (libnetwork's remote
//! driver API, `libnetwork/docs/remote.md` and `ipam.md`), and the shape of
//! every answer. Pure: decoding and rendering only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// The media type of plugin requests and responses.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";
/// `RequestAddressType` value of the gateway request.
pub const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// The IPAM option that says what an address request is for.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";

/// A failed request: Docker shows `msg` to the user, so it says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub msg: String,
}

impl PluginError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self { msg: msg.into() }
    }

    /// The body Docker reads the message from.
    pub fn to_json(&self) -> Value {
        json!({ "Err": self.msg })
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

pub type Reply = Result<Value, PluginError>;

/// Decodes a request body; an empty body is an empty object (Docker sends
/// `null` or nothing to calls without arguments).
pub fn decode<T: DeserializeOwned + Default>(method: &str, body: &[u8]) -> Result<T, PluginError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| PluginError::new(format!("{method}: the request is not JSON: {e}")))?;
    if v.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(v)
        .map_err(|e| PluginError::new(format!("{method}: unexpected request: {e}")))
}

/// One address pool of a network (`IPv4Data` entries).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct IpamData {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses")]
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options")]
    pub options: Option<Value>,
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// Any request that names a network and maybe an endpoint (DeleteNetwork,
/// DeleteEndpoint, EndpointOperInfo, Join, Leave, the external
/// connectivity calls, FreeNetwork).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct EndpointInterface {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface")]
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RequestPool {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "SubPool")]
    pub sub_pool: String,
    #[serde(rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PoolRef {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, Value>>,
}

impl RequestAddress {
    /// Whether this is the request for the network's gateway.
    pub fn is_gateway(&self) -> bool {
        self.options
            .as_ref()
            .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
            .and_then(Value::as_str)
            == Some(GATEWAY_REQUEST)
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

/// An address as Docker sends it: bare (`100.64.1.5`) or with a prefix
/// (`100.64.1.5/24`); `None` for an empty string.
pub fn parse_addr(what: &str, s: &str) -> Result<Option<Ipv4Addr>, PluginError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bare = s.split_once('/').map_or(s, |(a, _)| a);
    bare.parse().map(Some).map_err(|_| {
        PluginError::new(format!(
            "{what} {s:?} is not an IPv4 address (weft networks are IPv4)"
        ))
    })
}

/// A pool as Docker sends it; `None` for an empty string.
pub fn parse_pool(s: &str) -> Result<Option<Ipv4Net>, PluginError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| PluginError::new(format!("address pool {s:?} is not an IPv4 prefix")))
}

/// Docker's network and endpoint ids are 64 hex digits; anything of
/// letters, digits, `-` and `_` up to 128 long is accepted, since the id
/// names files and interfaces only through [`crate::docker::veth`].
pub fn check_id(what: &str, id: &str) -> Result<(), PluginError> {
    if (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(PluginError::new(format!(
            "{what} {id:?} is not a Docker id (1-128 letters, digits, `-`, `_`)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_docker_sends() {
        let r: CreateNetwork = decode(
            "CreateNetwork",
            br#"{"NetworkID":"abc","Options":{"com.docker.network.generic":{}},
                "IPv4Data":[{"AddressSpace":"weft","Pool":"100.64.1.0/24","Gateway":"100.64.1.1/24","AuxAddresses":null}],
                "IPv6Data":[],"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.network_id, "abc");
        let v4 = r.ipv4_data.unwrap();
        assert_eq!(v4[0].pool, "100.64.1.0/24");
        assert_eq!(v4[0].gateway, "100.64.1.1/24");

        let a: RequestAddress = decode(
            "RequestAddress",
            br#"{"PoolID":"p","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert!(a.is_gateway());
        let a: RequestAddress = decode(
            "RequestAddress",
            br#"{"PoolID":"p","Address":"100.64.1.9","Options":null}"#,
        )
        .unwrap();
        assert!(!a.is_gateway());
        assert_eq!(
            parse_addr("a", &a.address).unwrap(),
            Some([100, 64, 1, 9].into())
        );

        // Calls without arguments.
        let p: PoolRef = decode("GetCapabilities", b"").unwrap();
        assert_eq!(p, PoolRef::default());
        let p: PoolRef = decode("GetCapabilities", b"null").unwrap();
        assert_eq!(p, PoolRef::default());
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        for body in [
            &b"{"[..],
            b"[1,2]",
            b"\"x\"",
            b"{\"NetworkID\":5}",
            b"{\"IPv4Data\":{\"Pool\":1}}",
            b"\xff\xfe",
            b"{\"NetworkID\":\"a\",\"NetworkID\":\"b\"}",
        ] {
            let r = decode::<CreateNetwork>("CreateNetwork", body);
            if let Err(e) = r {
                assert!(e.msg.starts_with("CreateNetwork: "), "{e}");
            }
        }
        assert!(decode::<CreateNetwork>("CreateNetwork", b"{").is_err());
        assert!(decode::<CreateNetwork>("CreateNetwork", b"{\"NetworkID\":5}").is_err());
        // Deep nesting: serde_json's recursion limit turns it into an error.
        let deep = "[".repeat(100_000);
        assert!(decode::<CreateNetwork>("CreateNetwork", deep.as_bytes()).is_err());
    }

    #[test]
    fn addresses_and_ids_are_checked() {
        assert_eq!(parse_addr("a", "").unwrap(), None);
        assert_eq!(
            parse_addr("a", "100.64.1.5/24").unwrap(),
            Some([100, 64, 1, 5].into())
        );
        assert!(parse_addr("a", "fd00::1").is_err());
        assert!(parse_addr("a", "100.64.1.300").is_err());
        assert_eq!(
            parse_pool("100.64.1.0/24").unwrap().unwrap().to_string(),
            "100.64.1.0/24"
        );
        assert!(parse_pool("100.64.1.0").is_err());
        assert!(check_id("network", &"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a b", "a/b", &"a".repeat(129)] {
            assert!(check_id("network", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_have_the_shape_docker_reads() {
        let e = PluginError::new("the weft agent is not running: run `weft up`");
        assert_eq!(
            e.to_json(),
            json!({"Err": "the weft agent is not running: run `weft up`"})
        );
    }
}
