//! crmbridge connectors.
