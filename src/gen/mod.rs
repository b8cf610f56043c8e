//! Thrift code generated from `cache.thrift` (client API) and `src/network/peer.thrift` (peer
//! RPC) by `scripts/gen-thrift.sh`. Never edited by hand; CI checks it matches the IDL.

#[allow(dead_code, non_camel_case_types, clippy::all)]
pub mod cache;
#[allow(dead_code, non_camel_case_types, clippy::all)]
pub mod peer;
