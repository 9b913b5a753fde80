//! In-process tests of whole proxies: real listeners on 127.0.0.1:0, real mTLS with SVIDs
//! from a throwaway CA, the repository's example policies, SQLite audit logs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::{EndpointEntry, Registry, ServiceEntry, TrafficPolicy};

mod mesh;
mod otlp;
mod traffic;

const MOBILE: &str = "spiffe://ward.local/ns/mobile/sa/mobile-gateway";
const CHECKOUT: &str = "spiffe://ward.local/ns/checkout/sa/checkout-api";
const ORDERS: &str = "spiffe://ward.local/ns/orders/sa/orders-api";

/// `(address, expected id, labels)` of one endpoint.
type Endpoint<'a> = (SocketAddr, &'a str, &'a [(&'a str, &'a str)]);

/// A registry with one service whose endpoints are `(address, id, labels)`.
fn registry(
    service: &str,
    endpoints: &[Endpoint<'_>],
    subsets: &[(&str, &[(&str, &str)])],
    traffic: TrafficPolicy,
) -> Registry {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let entry = ServiceEntry {
        endpoints: endpoints
            .iter()
            .map(|(address, id, l)| EndpointEntry {
                address: *address,
                spiffe_id: (*id).to_owned(),
                labels: labels(l),
            })
            .collect(),
        subsets: subsets
            .iter()
            .map(|(name, l)| ((*name).to_owned(), labels(l)))
            .collect(),
        traffic,
    };
    Registry {
        services: BTreeMap::from([(service.to_owned(), entry)]),
    }
}
