//! One fake per vendor, in a folder named as the connector's
//! (`shared/connectors/src/vendors/<vendor>/`), following the facts in that
//! connector's `API.md`.

pub mod calltouch;
pub mod http;
pub mod hubspot;
pub mod kado;
pub mod moysklad;
pub mod nethunt;
pub mod planfix;
pub mod retailcrm;
pub mod ringostat;
pub mod verbox;
pub mod worksection;
pub mod zoho;

/// The vendors that have a fake, for the registry's completeness check.
pub const FAKED: &[&str] = &[
    "calltouch",
    "http",
    "hubspot",
    "kado",
    "moysklad",
    "nethunt",
    "planfix",
    "retailcrm",
    "ringostat",
    "verbox",
    "worksection",
    "zoho",
];
