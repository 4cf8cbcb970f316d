//! End-to-end scenarios written once and run through every deployment
//! shape (`crmbridge serve`, the Lambda binaries): each shape implements the
//! scenario's gateway, the cases and their assertions are shared.

pub mod ringostat_zoho;
